"""Labels made rather than read: self-supervised targets derived from RGB, and relative poses.

Denoising noise, colour bins (Zhang et al.), jigsaw permutations (Noroozi and Favaro), each seeded
per image so that every epoch and every process derives the same label; the 6-DoF pose between
two views for the multi-view tasks.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch

from .layout import CENTRE_8BIT, CURVATURE_SCALE, DEPTH_UNITS_PER_METRE

NOISE_STD = 0.1  # denoising: Gaussian noise on [0, 1] RGB, seeded per image
# Taskonomy's curvature targets: the release's two 8-bit channels standardised with these.
CURVATURE_MEAN = (123.572, 120.1)
CURVATURE_STD = (31.922, 21.658)
AB_GRID = 10.0  # colorization: ab bins on a 10-unit grid, kept where sRGB reaches (Zhang et al.)


@lru_cache(maxsize=1)
def colour_bins() -> np.ndarray:
    """The ab bin centres (K, 2) that some sRGB colour falls in, on a 10-unit grid.

    Zhang et al. keep 313 bins met in ImageNet; the sRGB gamut itself reaches 261, used here.
    """
    from skimage.color import rgb2lab

    g = np.linspace(0, 1, 64)
    lab = rgb2lab(np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 1, 3))
    cells = np.unique(np.rint(lab.reshape(-1, 3)[:, 1:] / AB_GRID).astype(int), axis=0)
    return (cells * AB_GRID).astype(np.float32)


@lru_cache(maxsize=1)
def _bin_lookup() -> np.ndarray:
    """For every cell of the 23x23 ab grid (-110..110), the index of the nearest in-gamut bin."""
    grid = np.arange(-11, 12) * AB_GRID
    cells = np.stack(np.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    d = ((cells[:, None, :] - colour_bins()[None]) ** 2).sum(-1)
    return d.argmin(1).reshape(23, 23)


def colorize(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(grey input (3, H, W) = L/100 thrice, ab bin index (H, W)) of an (H, W, 3) image."""
    from skimage.color import rgb2lab

    lab = rgb2lab(rgb.astype(np.float64))
    cell = np.clip(np.rint(lab[..., 1:] / AB_GRID).astype(int) + 11, 0, 22)
    grey = np.repeat((lab[None, ..., 0] / 100.0).astype(np.float32), 3, 0)
    return grey, _bin_lookup()[cell[..., 0], cell[..., 1]]


def lightness(rgb: np.ndarray) -> np.ndarray:
    """Colorization's input of channels-first images (..., 3, H, W): L/100 on every channel.

    The same values as `colorize`'s grey input; what the colorization encoder sees whenever it
    encodes an image, as in Taskonomy, whose colorization network only ever saw lightness.
    """
    from skimage.color import rgb2lab

    light = rgb2lab(np.moveaxis(rgb.astype(np.float64), -3, -1))[..., 0] / 100.0
    return np.repeat(light[..., None, :, :].astype(np.float32), 3, -3)


def noisy(rgb: torch.Tensor, seed: int) -> torch.Tensor:
    """Denoising's input: `rgb` plus Gaussian noise (NOISE_STD) drawn from `seed`, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    return (rgb + torch.randn(rgb.shape, generator=g) * NOISE_STD).clamp(0, 1)


def centre_masked(rgb: torch.Tensor) -> torch.Tensor:
    """Inpainting's input: `rgb` (..., 3, H, W) with its centre half hidden (set to 0)."""
    h, w = rgb.shape[-2:]
    out = rgb.clone()
    out[..., h // 4: h - h // 4, w // 4: w - w // 4] = 0
    return out


@lru_cache(maxsize=4)
def jigsaw_permutations(n: int, seed: int = 0) -> np.ndarray:
    """`n` permutations of 9 tiles, far apart in Hamming distance.

    Greedy, as Noroozi and Favaro, over a seeded pool of candidates so that the set is fixed and
    quick to build.
    """
    rng = np.random.default_rng(seed)
    pool = np.unique(np.stack([rng.permutation(9) for _ in range(max(20 * n, 2000))]), axis=0)
    chosen = [0]
    dist = (pool != pool[0]).sum(1)
    for _ in range(n - 1):
        nxt = int(dist.argmax())
        chosen.append(nxt)
        dist = np.minimum(dist, (pool != pool[nxt]).sum(1))
    return pool[chosen]


def jigsaw(rgb: torch.Tensor, perm_index: int, perms: np.ndarray) -> torch.Tensor:
    """(3, H, W) image whose 3x3 tiles are shuffled by permutation `perm_index` (border kept 0)."""
    _, h, w = rgb.shape
    th, tw = h // 3, w // 3
    tiles = [rgb[:, r * th:(r + 1) * th, c * tw:(c + 1) * tw] for r in range(3) for c in range(3)]
    out = torch.zeros_like(rgb)
    for pos, src in enumerate(perms[perm_index]):
        r, c = divmod(pos, 3)
        out[:, r * th:(r + 1) * th, c * tw:(c + 1) * tw] = tiles[int(src)]
    return out


def relative_pose(a: dict[str, Any], b: dict[str, Any]) -> np.ndarray:
    """6-DoF pose of camera b in camera a's frame: translation (3, metres), rotation vector (3).

    point_info holds world-from-camera rotations in Blender's camera frame (looking down -z).
    """
    from scipy.spatial.transform import Rotation

    ra = np.asarray(a["camera_rotation_matrix"], np.float64)
    rb = np.asarray(b["camera_rotation_matrix"], np.float64)
    t = ra.T @ (np.asarray(b["camera_location"]) - np.asarray(a["camera_location"]))
    rot = Rotation.from_matrix(ra.T @ rb).as_rotvec()
    return np.concatenate([t, rot]).astype(np.float32)


# The room box seen as a camera would: x right, y up (the room's z), z backwards (the room's -y).
# An upright camera facing the room's +y axis is then the identity.
_ROOM_AS_CAMERA = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


def _quarter_turn(k: int) -> np.ndarray:
    c, s = [(1, 0), (0, 1), (-1, 0), (0, -1)][k % 4]
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def canonical_room_frame(camera_from_room: np.ndarray) -> tuple[np.ndarray, int]:
    """The room axes to label a view with, and how many quarter turns about up they took.

    A box looks the same from frames turned by quarter turns about its up axis (x and y extents
    swapping on odd turns), so a label may use any of the four. The one closest to the camera
    (smallest rotation from an upright camera facing its +y axis) keeps the label continuous as
    the camera turns, but at the diagonals (45 degrees off a wall, where views are fewest), instead
    of jumping where Euler angles wrap or an axis crosses the image plane (facing a wall).
    """
    best, turns, angle = camera_from_room, 0, np.inf
    for k in range(4):
        r = camera_from_room @ _quarter_turn(k)
        a = np.arccos(np.clip((np.trace(r @ _ROOM_AS_CAMERA) - 1) / 2, -1.0, 1.0))
        if a < angle - 1e-9:
            best, turns, angle = r, k, a
    return best, turns


def room_layout_label(stored: Any) -> np.ndarray:
    """room_layout's 9 training numbers from point_info's, in the canonical room frame.

    Box centre (camera frame, 3), extents along the canonical room axes (3), and the rotation
    vector from an upright camera facing the canonical +y axis to this camera (3). point_info
    stores the rotation as scipy 'xyz' Euler angles of the room's own axes; those wrap at +-pi
    and suffer gimbal jumps, so views a few degrees apart could differ by 2 pi.
    """
    from scipy.spatial.transform import Rotation

    v = np.asarray(stored, np.float64)
    frame, turns = canonical_room_frame(Rotation.from_euler("xyz", v[6:9]).as_matrix())
    extents = v[3:6][[1, 0, 2]] if turns % 2 else v[3:6]
    rot = Rotation.from_matrix(frame @ _ROOM_AS_CAMERA).as_rotvec()
    return np.concatenate([v[:3], extents, rot]).astype(np.float32)


def vanishing_point_label(stored_layout: Any) -> np.ndarray:
    """vanishing_point's 9 training numbers: the canonical room axes in the camera frame.

    Unit x, y and up directions, whose signs follow the camera continuously (see
    `canonical_room_frame`) instead of flipping when an axis crosses the image plane.
    """
    from scipy.spatial.transform import Rotation

    rotation = Rotation.from_euler("xyz", np.asarray(stored_layout, np.float64)[6:9]).as_matrix()
    frame, _ = canonical_room_frame(rotation)
    return frame.T.reshape(-1).astype(np.float32)


def log_depth(metres: torch.Tensor) -> torch.Tensor:
    """Depth as Taskonomy trains on it: log(1 + raw), raw the release's 1/512 m units.

    An L1 loss on it weighs near and far pixels by relative, not absolute, error; masked
    (invalid, zeroed) pixels map to 0. Taskonomy also divides by log(2^16): a constant factor
    scales every image's loss alike, so it changes no win rate, but it shrinks the target's spread
    to ~0.05 and the mini gold network then no longer beat a constant prediction in its few steps
    (it does undivided: 0.925 of the constant's mean loss on the demo's render, as on metres).
    """
    return torch.log1p(metres * DEPTH_UNITS_PER_METRE)


def standardised_curvature(k: torch.Tensor) -> torch.Tensor:
    """Curvature (2, H, W) as Taskonomy trains on it: the release's 8-bit channels standardised.

    The file's bytes (127 + CURVATURE_SCALE x k, layout.py) minus Taskonomy's per-channel mean,
    over its per-channel deviation, so both curvatures weigh as they did in its L2 loss.
    """
    raw = CENTRE_8BIT + CURVATURE_SCALE * k
    mean = torch.tensor(CURVATURE_MEAN, dtype=k.dtype).view(-1, 1, 1)
    std = torch.tensor(CURVATURE_STD, dtype=k.dtype).view(-1, 1, 1)
    return (raw - mean) / std


# Each TaskSpec.target (tasks.TARGETS) but the decoded value itself.
TARGET_FNS = {"log_depth": log_depth, "standardised_curvature": standardised_curvature}
