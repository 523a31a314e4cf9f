"""Data for every step: a torch Dataset over a Taskonomy-layout root.

Regime subsets of the building splits (splits.py), multi-view samples, validity masks, and every
task's label decoded (or derived from RGB) per its spec.

Used by step 1 (task networks), step 2 (transfers) and the evaluation; reads through `layout`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from . import layout
from .derived import (
    TARGET_FNS,
    centre_masked,
    colorize,
    colour_bins,
    jigsaw,
    jigsaw_permutations,
    noisy,
    relative_pose,
    room_layout_label,
    vanishing_point_label,
)
from .errors import ConfigError, DataError
from .samples import (
    PAIRING,
    Sample,
    View,
    image_seed,
    matches,
    nonfixated_pairs,
    same_point,
    sample_id,
)
from .splits import SPLITS, SplitConfig, split_buildings
from .tasks import DEPTH_MASK_DOMAIN, TaskSpec, get_task

BAD_FILE_MODES = ("error", "skip")


class BadFile(DataError):
    """A missing or corrupt dataset file; `path` names it."""

    def __init__(self, path: Path | str, message: str) -> None:
        super().__init__(message)
        self.path = str(path)

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # Pickled with both arguments: a Ray worker sends its failure to the driver this way,
        # and an exception it cannot unpickle arrives as a crash, retried as if transient.
        return type(self), (self.path, str(self))


def output_channels(task: str, root: str | Path | None = None, *, jigsaw_classes: int = 1000,
                    embedding_dim: int | None = None) -> int:
    """Channels (classes, vector length) of `task`'s network output for the dataset at `root`.

    Class counts come from `dataset_info.json`'s name lists (one name per id, from id 0) when the
    root has one, else from the registry's paper values (a real release root).
    """
    spec = get_task(task)
    if spec.name in ("class_object", "class_scene", "segment_semantic") and root is not None:
        names = layout.read_info(root).get(spec.name)
        if names is not None:
            if not isinstance(names, list) or len(names) < 2:
                raise DataError(f"{Path(root) / layout.INFO_FILE}: {spec.name!r} must list at "
                                "least two class names; re-render the dataset")
            return len(names)
    if spec.derived == "colorize":
        return len(colour_bins())
    if spec.derived == "jigsaw":
        return jigsaw_classes
    if spec.output == "pixel_embedding" and embedding_dim is not None:
        return embedding_dim
    return spec.channels


def _resize(x: torch.Tensor, size: int, kind: str) -> torch.Tensor:
    """Resize a (C, H, W) tensor: area for values, nearest for ids and masks."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    if kind == "ids":
        return F.interpolate(x[None].float(), (size, size), mode="nearest")[0].to(x.dtype)
    if kind == "mask":  # valid only where every source pixel the value reads is valid
        mode = "area" if x.shape[-1] > size else "bilinear"  # as the values are resized
        kw = {} if mode == "area" else {"align_corners": False}
        return F.interpolate(x[None].float(), (size, size), mode=mode, **kw)[0] > 0.999
    if x.shape[-1] > size:
        return F.interpolate(x[None], (size, size), mode="area")[0]
    return F.interpolate(x[None], (size, size), mode="bilinear", align_corners=False)[0]


# ---------------------------------------------------------------- the dataset

# The vector labels, from point_info's room box (both in the box's canonical frame: derived.py).
VECTOR_LABELS = {"room_layout": room_layout_label, "vanishing_point": vanishing_point_label}


class TaskonomyDataset(Dataset):
    """Samples of one split of a Taskonomy-layout root, with the labels of `tasks`.

    A sample is a dict: `image` (stable id), `rgb` float32 (3, H, W) or (V, 3, H, W) for a
    multi-view task, and per task `<task>` (label), `<task>_mask` (bool (1, H, W), masked tasks:
    valid depth_zbuffer), `<task>_input` (when the network does not see plain rgb). Multi-view
    tasks pair views thus: fixated_pose and egomotion take 2 / 3 views of one point (its next views
    in order, cyclically); nonfixated_pose pairs a view with a view of another point that it sees
    (point_info's `nonfixated_points_in_view`), so the cameras do not fixate the same point but
    both see that point's surface (roots whose point_info lacks the list: any other point of the
    same room, by room boxes agreeing in the world frame); point_matching alternates positives
    (two views of one point, label 1) and negatives (a view of another point of the building,
    label 0), so classes are balanced; anchors whose point has one view can only be negatives.
    A multi-view task must be the only task of its dataset. `on_bad_file="skip"` turns a missing
    or corrupt file into a skipped sample recorded in `bad_files` (path -> reason); "error"
    raises `BadFile`.
    """

    def __init__(self, root: str | Path, tasks: Sequence[str] = (), *, split: str = "train",
                 splits: SplitConfig | None = None, subset: int | None = None,
                 subset_seed: int = 0, size: int | None = None, on_bad_file: str = "error",
                 jigsaw_classes: int = 1000, seed: int = 0) -> None:
        if split not in (*SPLITS, "all"):
            raise ConfigError(f"split must be one of {SPLITS} or 'all', got {split!r}")
        if on_bad_file not in BAD_FILE_MODES:
            raise ConfigError(f"on_bad_file must be one of {BAD_FILE_MODES}, got {on_bad_file!r}")
        self.root, self.split, self.size, self.seed = Path(root), split, size, seed
        self.on_bad_file = on_bad_file
        self.specs: list[TaskSpec] = [get_task(t) for t in tasks]
        multi = [s for s in self.specs if s.views > 1]
        if multi and len(self.specs) > 1:
            raise ConfigError(f"{multi[0].name} is multi-view and must be the only task of its "
                              "dataset; build one dataset per multi-view task")
        self.multi = multi[0] if multi else None
        # Class counts a label file must fit (a longer vector or a larger id would be a bad file).
        self.classes = {s.name: output_channels(s.name, root) for s in self.specs
                        if s.derived is None and s.output in ("class_distribution",
                                                              "pixel_classes")}
        jig = any(s.derived == "jigsaw" for s in self.specs)
        self.perms = jigsaw_permutations(jigsaw_classes) if jig else np.zeros((0, 9), np.int64)
        self.bad_files: dict[str, str] = {}
        found = layout.buildings(self.root)
        splits = splits or SplitConfig()
        self.buildings = (sorted(found) if split == "all"
                          else split_buildings(found, splits)[split])
        self.samples = self._make_samples()
        if not self.samples:
            raise DataError(f"split {split!r} of {self.root} ({self.buildings}) has no samples "
                            f"for {[s.name for s in self.specs]}; render more points or views")
        cap = splits.test_images
        if split == "test" and cap is not None and cap < len(self.samples):
            self.samples = self._subset(cap, splits.seed)
        if subset is not None:
            self.samples = self._subset(subset, subset_seed)

    # --- indexing (once, at construction)

    def _index(self) -> dict[str, dict[int, list[int]]]:
        idx: dict[str, dict[int, list[int]]] = {}
        for b in self.buildings:
            points: dict[int, list[int]] = {}
            for p, v in layout.scan(self.root, b, "rgb"):
                points.setdefault(p, []).append(v)
            idx[b] = points
        return idx

    def _make_samples(self) -> list[Sample]:
        idx = self._index()
        name = self.multi.name if self.multi else ""
        rule = PAIRING.get(name, "") if self.multi else "single"
        if not rule:
            raise ConfigError(f"no view pairing rule for {name}; add it to PAIRING")
        out: list[Sample] = []
        for b, points in idx.items():
            views = [View(b, p, v) for p in sorted(points) for v in points[p]]
            if rule == "single":
                out += [((v,), -1) for v in views]
            elif rule == "same_point":
                out += same_point(b, points, self.multi.views if self.multi else 1)
            elif rule == "same_room":
                out += self._same_room(views)
            else:
                out += matches(b, points, self.seed)
        return out

    def _same_room(self, views: list[View]) -> list[Sample]:
        read = {v: self._try_info(v) for v in views}
        return nonfixated_pairs({v: i for v, i in read.items() if i is not None}, self.seed)

    def _try_info(self, v: View) -> dict[str, Any] | None:
        try:
            return self._read(v, "point_info")
        except BadFile as e:
            if self.on_bad_file == "error":
                raise
            self.bad_files[e.path] = str(e)
            return None

    def _subset(self, n: int, seed: int) -> list[Sample]:
        if not 1 <= n <= len(self.samples):
            raise DataError(f"a subset of {n} samples was asked of split {self.split!r}, which "
                            f"has {len(self.samples)}; use a smaller regime or render more points")
        pick = np.random.default_rng(seed).choice(len(self.samples), n, replace=False)
        return [self.samples[i] for i in sorted(pick)]

    # --- loading

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def images(self) -> list[str]:
        """Ids of every sample, in order."""
        return [sample_id(v) for v, _ in self.samples]

    def __getitem__(self, i: int) -> dict[str, Any]:
        views, match = self.samples[i]
        image = sample_id(views)
        try:
            out = self._load_views(views, match)
        except BadFile as e:
            if self.on_bad_file == "error":
                raise
            self.bad_files[e.path] = str(e)
            return {"image": image, "skipped": e.path, "reason": str(e)}
        out["image"] = image
        return out

    def _read(self, v: View, domain: str) -> Any:
        path = layout.path_for(self.root, v.building, v.point, v.view, domain)
        try:
            return layout.read_path(path, domain)
        except DataError as e:
            raise BadFile(path, str(e)) from e

    def _load_views(self, views: tuple[View, ...], match: int) -> dict[str, Any]:
        if self.multi is None:
            return self._load_view(views[0])
        rgb = torch.stack([self._load_view(v)["rgb"] for v in views])  # (V, 3, H, W)
        name = self.multi.name
        if name == "point_matching":
            return {"rgb": rgb, name: torch.tensor(match, dtype=torch.long)}
        infos = [self._read(v, "point_info") for v in views]
        pairs = [(0, 1), (0, 2), (1, 2)] if len(views) == 3 else [(0, 1)]
        label = np.concatenate([relative_pose(infos[a], infos[b]) for a, b in pairs])
        return {"rgb": rgb, name: torch.from_numpy(label)}

    def _load_view(self, v: View) -> dict[str, Any]:
        raw = self._read(v, "rgb")
        rgb = torch.from_numpy(np.ascontiguousarray(raw.transpose(2, 0, 1)))  # (3, H, W)
        shape = raw.shape[:2]
        rgb = _resize(rgb, self.size, "value") if self.size else rgb
        out: dict[str, Any] = {"rgb": rgb}
        for spec in self.specs:
            if spec.views == 1:
                self._add_task(out, spec, v, shape)
        return out

    def _add_task(self, out: dict[str, Any], spec: TaskSpec, v: View,
                  shape: tuple[int, ...]) -> None:
        """Put `spec`'s label (and input, mask) of view `v` into `out`."""
        name = spec.name
        if spec.derived is not None:
            self._derive(out, spec, v)
            return
        if spec.output == "vector_regression":
            info = self._read(v, "point_info")
            if "room_layout" not in info:
                path = layout.path_for(self.root, v.building, v.point, v.view, "point_info")
                raise BadFile(path, f"{path} has no room box, which {name} is trained on (a "
                                    "release record has it as bounding_box_ranges); re-download "
                                    f"the file, or leave {name} out of this root's tasks")
            out[name] = torch.from_numpy(VECTOR_LABELS[name](info["room_layout"]))
            return
        value = self._read(v, spec.domains[0])
        path = layout.path_for(self.root, v.building, v.point, v.view, spec.domains[0])
        if spec.output == "class_distribution":
            if len(value) != self.classes[name]:
                raise BadFile(path, f"{path} holds {len(value)} class scores but the dataset has "
                                    f"{self.classes[name]} {name} classes; re-render or "
                                    "re-download it, or use on_bad_file='skip'")
            out[name] = torch.from_numpy(np.asarray(value, np.float32))
            return
        arr = np.asarray(value)
        if arr.shape[:2] != shape:
            raise BadFile(path, f"{path} is {arr.shape[:2]} but the rgb image is {shape}; "
                                "re-render or re-download it, or use on_bad_file='skip'")
        if name in self.classes and arr.max(initial=0) >= self.classes[name]:
            raise BadFile(path, f"{path} holds class id {int(arr.max())} but the dataset has "
                                f"{self.classes[name]} {name} classes (ids 0..."
                                f"{self.classes[name] - 1}); re-render or re-download it, or use "
                                "on_bad_file='skip'")
        if spec.output == "pixel_regression":
            t = torch.from_numpy(np.ascontiguousarray(arr.reshape(*shape, -1).transpose(2, 0, 1)))
            if name in layout.DEPTH_DOMAINS:  # invalid depth is masked; keep it from the label
                t = torch.where(t < layout.DEPTH_INVALID_RAW / layout.DEPTH_UNITS_PER_METRE, t, 0)
            if spec.target in TARGET_FNS:  # what Taskonomy trained on, before resizing as it did
                t = TARGET_FNS[spec.target](t)
            out[name] = _resize(t, self.size, "value") if self.size else t
        else:  # class ids (segment_semantic) or segment ids (segment_unsup*): long (H, W)
            t = torch.from_numpy(arr.astype(np.int64))[None]
            out[name] = (_resize(t, self.size, "ids") if self.size else t)[0]
        if spec.masked:
            depth = value if name == DEPTH_MASK_DOMAIN else self._read(v, DEPTH_MASK_DOMAIN)
            mask = torch.from_numpy(layout.depth_valid(np.asarray(depth)))[None]
            out[f"{name}_mask"] = _resize(mask, self.size, "mask") if self.size else mask

    def _derive(self, out: dict[str, Any], spec: TaskSpec, v: View) -> None:
        """Self-supervised labels made from the (resized) RGB image itself."""
        name, rgb = spec.name, out["rgb"]
        kind = spec.derived
        if kind == "identity":
            out[name] = rgb
        elif kind == "denoise":
            out[f"{name}_input"], out[name] = noisy(rgb, image_seed(v.id, self.seed)), rgb
        elif kind == "colorize":
            grey, bins = colorize(rgb.permute(1, 2, 0).numpy())
            out[f"{name}_input"], out[name] = torch.from_numpy(grey), torch.from_numpy(bins)
        elif kind == "inpaint":
            out[f"{name}_input"], out[name] = centre_masked(rgb), rgb
        elif kind == "jigsaw":
            k = image_seed(v.id, self.seed) % len(self.perms)
            out[f"{name}_input"] = jigsaw(rgb, k, self.perms)
            out[name] = torch.tensor(k, dtype=torch.long)
        # kind == "random": the random encoder has no label

    def bad_file_report(self) -> str:
        """A readable summary of the files skipped so far (empty when none)."""
        if not self.bad_files:
            return ""
        lines = [f"{len(self.bad_files)} bad file(s) skipped under {self.root}:"]
        lines += [f"  {p}: {r}" for p, r in sorted(self.bad_files.items())]
        return "\n".join(lines)


def regime_dataset(root: str | Path, tasks: Sequence[str], regime: int, *, seed: int = 0,
                   **kwargs: Any) -> TaskonomyDataset:
    """The training subset of a transfer regime: `regime` samples of the validation split.

    As in the paper, transfers train on data held out from the task networks' training set.
    """
    return TaskonomyDataset(root, tasks, split="val", subset=regime, subset_seed=seed, **kwargs)


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples into a batch, dropping skipped ones (listed in `batch["skipped"]`)."""
    good = [s for s in samples if "skipped" not in s]
    skipped = [(s["skipped"], s["reason"]) for s in samples if "skipped" in s]
    batch: dict[str, Any] = torch.utils.data.default_collate(good) if good else {"image": []}
    batch["skipped"] = skipped
    return batch


def batches(dataset: TaskonomyDataset, batch_size: int, *, shuffle: bool = False, seed: int = 0,
            num_workers: int = 0, drop_last: bool = False, shard: tuple[int, int] = (0, 1),
            keep_empty: bool = False, skip: int = 0) -> Iterator[dict[str, Any]]:
    """One epoch of batches; skips reported by worker processes are added to `bad_files`.

    `shard=(rank, world)` splits every batch of `batch_size` among `world` data-parallel
    replicas: each loads only its own `batch_size // world` samples of the same global batch, so
    all replicas take the same number of steps. `keep_empty` also yields batches whose samples
    were all skipped (replicas must agree on whether to step). `skip` leaves out the epoch's
    first `skip` batches without loading them, so a resumed training continues mid-epoch.
    """
    rank, world = shard
    if batch_size % world:
        raise ConfigError(f"batch size {batch_size} does not split among {world} "
                          "data-parallel workers; make it a multiple of the worker count")
    n = len(dataset)
    order = (torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
             if shuffle else list(range(n)))
    stop = n - n % batch_size if drop_last else n
    mine = [order[i:i + batch_size][rank::world]
            for i in range(skip * batch_size, stop, batch_size)]
    # The loader draws its workers' base seed from a generator of its own, not from the global
    # one that dropout draws from: where an epoch starts moves no random draw of a training.
    loader = DataLoader(dataset, batch_sampler=mine, num_workers=num_workers,
                        collate_fn=collate, generator=torch.Generator().manual_seed(seed))
    for batch in loader:
        dataset.bad_files.update(dict(batch.pop("skipped")))
        if batch["image"] or keep_empty:
            yield batch
