"""Labels made rather than read: self-supervised targets derived from RGB, and relative poses.

Denoising noise, colour bins (Zhang et al.), jigsaw permutations (Noroozi and Favaro), each seeded
per image so that every epoch and every process derives the same label; the 6-DoF pose between
two views for the multi-view tasks.
"""

from __future__ import annotations

import zlib
from functools import lru_cache
from typing import Any

import numpy as np
import torch

NOISE_STD = 0.1  # denoising: Gaussian noise on [0, 1] RGB, seeded per image
AB_GRID = 10.0  # colorization: ab bins on a 10-unit grid, kept where sRGB reaches (Zhang et al.)


def image_seed(image: str, seed: int) -> int:
    """A per-image seed: the same image draws the same noise, tiles or view mate every time."""
    return zlib.crc32(f"{seed}:{image}".encode())


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
