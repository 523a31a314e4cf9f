"""Which views make one sample: image ids, and each multi-view task's pairing rule.

Pure (numpy, no torch); `dataset.TaskonomyDataset` scans the views and reads their point_info.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def image_seed(image: str, seed: int) -> int:
    """A per-image seed: the same image draws the same noise, tiles or view mate every time."""
    return zlib.crc32(f"{seed}:{image}".encode())


ROOM_TOLERANCE_M = 0.25  # two views share a room when their room boxes agree within this
IN_VIEW = "nonfixated_points_in_view"  # point_info: other points whose surface the view sees


@dataclass(frozen=True)
class View:
    """One image of the dataset: a view of a point in a building."""

    building: str
    point: int
    view: int

    @property
    def id(self) -> str:
        """The stable image id used in the loss tables, e.g. `b0/point_3_view_1`."""
        return f"{self.building}/point_{self.point}_view_{self.view}"


def sample_id(views: Sequence[View]) -> str:
    """Id of a sample: the first view's id, then `+point_i_view_j` for each other view."""
    return views[0].id + "".join(f"+point_{v.point}_view_{v.view}" for v in views[1:])


# How a multi-view task groups views into one sample (see `TaskonomyDataset`'s docstring).
PAIRING = {"fixated_pose": "same_point", "egomotion": "same_point",
           "nonfixated_pose": "same_room", "point_matching": "match"}
Sample = tuple[tuple[View, ...], int]  # views, point_matching label (-1 for other tasks)


def same_point(building: str, points: dict[int, list[int]], k: int) -> list[Sample]:
    """Samples of k views of one point: each view with its next k-1 views, cyclically."""
    out: list[Sample] = []
    for p in sorted(points):
        vs = points[p]
        if len(vs) >= k:
            out += [(tuple(View(building, p, vs[(i + j) % len(vs)]) for j in range(k)), -1)
                    for i in range(len(vs))]
    return out


def matches(building: str, points: dict[int, list[int]], seed: int) -> list[Sample]:
    """point_matching's pairs: positives (label 1) and negatives (0) alternate, seeded picks."""
    out: list[Sample] = []
    plist = sorted(points)
    for p in plist:
        vs, others = points[p], [q for q in plist if q != p]
        for i, v in enumerate(vs):
            anchor = View(building, p, v)
            if len(vs) > 1 and (len(out) % 2 == 0 or not others):
                out.append(((anchor, View(building, p, vs[(i + 1) % len(vs)])), 1))
            elif others:
                r = image_seed(anchor.id, seed)
                q = others[r % len(others)]
                out.append(((anchor, View(building, q, points[q][r // 7 % len(points[q])])), 0))
    return out


def _room_key(info: dict[str, Any]) -> np.ndarray:
    """World-frame room-box centre and size: equal for every view of one room."""
    r = np.asarray(info["camera_rotation_matrix"], np.float64)
    box = np.asarray(info["room_layout"], np.float64)
    centre = np.asarray(info["camera_location"], np.float64) + r @ box[:3]
    return np.concatenate([centre, np.sort(np.abs(box[3:6]))])


def nonfixated_pairs(infos: dict[View, dict[str, Any]], seed: int) -> list[Sample]:
    """Each view of one building paired with a view of another point of its room (seeded pick).

    w is a mate of v when w shows another point and, where v lists the points it sees
    (`nonfixated_points_in_view`, by point number or `point_uuid`), w's point is among them, and,
    where both have room boxes, the boxes agree within ROOM_TOLERANCE_M; a view with neither a
    list nor a box has no evidence and no mate. Candidates come from an index of the seen points
    (or, without a list, one vectorised box comparison), not from every view of the building: a
    release-sized building of 7,500 views with lists pairs in ~1 s here (~4 s with boxes alone),
    where testing every pair in Python took 56 s for 1,500. Mates are taken in `infos` order, so
    the pick is the rule's, view by view.
    """
    order = list(infos)
    pos = {v: i for i, v in enumerate(order)}
    by_name: dict[str, list[int]] = {}
    for i, v in enumerate(order):
        by_name.setdefault(str(v.point), []).append(i)
        if "point_uuid" in infos[v]:
            by_name.setdefault(str(infos[v]["point_uuid"]), []).append(i)
    boxed = np.array(["room_layout" in infos[v] for v in order], bool)
    keys = np.zeros((len(order), 6))
    for j in np.flatnonzero(boxed).tolist():
        keys[j] = _room_key(infos[order[j]])
    points = np.array([v.point for v in order])
    out: list[Sample] = []
    for v, info in infos.items():
        i, seen = pos[v], info.get(IN_VIEW)
        if seen is not None:
            cand = np.array(sorted({j for p in seen for j in by_name.get(str(p), ())}), int)
        elif boxed[i]:
            cand = np.arange(len(order))
        else:
            continue
        cand = cand[points[cand] != v.point]
        if boxed[i] and len(cand):  # both boxed: the boxes must agree
            agree = np.abs(keys[cand] - keys[i]).max(1) <= ROOM_TOLERANCE_M
            cand = cand[~boxed[cand] | agree] if seen is not None else cand[boxed[cand] & agree]
        if len(cand):
            out.append(((v, order[cand[image_seed(v.id, seed) % len(cand)]]), -1))
    return out
