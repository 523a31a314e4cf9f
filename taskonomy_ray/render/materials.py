"""Mini-Taskonomy rendering, step 3: procedural materials (wood, tiles, stripes, noise, posters).

Textures are functions of a hit's surface coordinates in metres, so a pattern keeps its physical
scale whatever the camera distance; their edges are appearance edges, not depth edges.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

KINDS = ("plain", "wood", "tiles", "stripes", "noise", "fabric", "screen", "poster", "books")


@dataclass(frozen=True)
class Material:
    """A surface look: a pattern `kind`, two colours, the pattern period (m) and a pattern seed."""

    kind: str
    color: tuple[float, float, float]
    color2: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"material kind {self.kind!r} unknown; use one of {KINDS}")
        if self.scale <= 0:
            raise ConfigError(f"material scale must be > 0 metres, got {self.scale}")


def _hash(ix: np.ndarray, iy: np.ndarray, seed: int) -> np.ndarray:
    """A deterministic pseudo-random value in [0, 1) per integer lattice cell."""
    h = (ix.astype(np.int64) * 374761393 + iy.astype(np.int64) * 668265263
         + seed * 2147483647) & 0xFFFFFFFF
    h = ((h ^ (h >> 13)) * 1274126177) & 0xFFFFFFFF
    h = h ^ (h >> 16)
    return (h & 0xFFFFFF).astype(np.float64) / float(1 << 24)


def value_noise(u: np.ndarray, v: np.ndarray, seed: int, octaves: int = 3) -> np.ndarray:
    """Smooth lattice value noise in [0, 1] (octaves of bilinear noise with smoothstep)."""
    total = np.zeros_like(u)
    amp, norm = 1.0, 0.0
    for o in range(octaves):
        fu, fv = u * (2**o), v * (2**o)
        iu, iv = np.floor(fu), np.floor(fv)
        su, sv = fu - iu, fv - iv
        su, sv = su * su * (3 - 2 * su), sv * sv * (3 - 2 * sv)
        s = seed + 101 * o
        a, b = _hash(iu, iv, s), _hash(iu + 1, iv, s)
        c, d = _hash(iu, iv + 1, s), _hash(iu + 1, iv + 1, s)
        total += amp * ((a * (1 - su) + b * su) * (1 - sv) + (c * (1 - su) + d * su) * sv)
        norm += amp
        amp *= 0.5
    return total / norm


def pulse(x: np.ndarray, width: float, fw: np.ndarray) -> np.ndarray:
    """Box-filtered pulse train: the share of [x - fw/2, x + fw/2] where frac(x) < width.

    Filtering over the pixel footprint `fw` keeps thin lines (grout, seams) from aliasing into
    dashes at low resolution; for fw -> 0 it is the plain indicator.
    """
    fw = np.maximum(fw, 1e-4)

    def integral(y: np.ndarray) -> np.ndarray:
        k = np.floor(y)
        return k * width + np.minimum(y - k, width)

    return (integral(x + fw / 2) - integral(x - fw / 2)) / fw


def albedo(m: Material, uv: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """Surface colour (N, 3) in [0, 1] of material `m` at texture coordinates `uv` (N, 2).

    `footprint` (N,) is the pixel's extent on the surface in metres, for anti-aliasing.
    """
    u, v = uv[:, 0] / m.scale, uv[:, 1] / m.scale
    fw = footprint / m.scale
    c1, c2 = np.asarray(m.color), np.asarray(m.color2)
    if m.kind == "plain":
        w = 0.03 * (value_noise(u * 2, v * 2, m.seed, 2) - 0.5)
        return np.clip(c1[None] * (1 + w[:, None]), 0, 1)
    mix = _PATTERNS[m.kind](u, v, m.seed, fw)
    return np.clip(c1[None] * (1 - mix[:, None]) + c2[None] * mix[:, None], 0, 1)


def _attenuate(freq: float, fw: np.ndarray) -> np.ndarray:
    """Contrast left of a sinusoid of `freq` cycles per unit once averaged over `fw` units."""
    return np.exp(-2.0 * (freq * fw) ** 2)


def _wood(u: np.ndarray, v: np.ndarray, seed: int, fw: np.ndarray) -> np.ndarray:
    plank = np.floor(v)  # planks one period wide, running along u
    offset = _hash(plank, plank * 0 + 7, seed) * 3.0
    phase = 6 * v + 1.5 * value_noise(u * 0.8 + offset, v * 3, seed, 2)
    grain = 0.5 + 0.5 * np.sin(2 * np.pi * phase) * _attenuate(6.0, fw)
    seam = 1 - (1 - pulse(v, 0.05, fw)) * (1 - pulse((u + offset) / 4.0, 0.01, fw / 4.0))
    tone = 0.25 * _hash(plank, np.floor((u + offset) / 4.0), seed + 3)
    return seam + (1 - seam) * np.clip(0.35 * grain + tone, 0, 0.8)


def _tiles(u: np.ndarray, v: np.ndarray, seed: int, fw: np.ndarray) -> np.ndarray:
    grout = 1 - (1 - pulse(u, 0.07, fw)) * (1 - pulse(v, 0.07, fw))
    tone = 0.15 * _hash(np.floor(u), np.floor(v), seed)
    return grout + (1 - grout) * tone


def _stripes(u: np.ndarray, v: np.ndarray, seed: int, fw: np.ndarray) -> np.ndarray:
    return pulse(u, 0.35, fw)


def _noise(u: np.ndarray, v: np.ndarray, seed: int, fw: np.ndarray) -> np.ndarray:
    return value_noise(u * 2, v * 2, seed, 3)


def _fabric(u: np.ndarray, v: np.ndarray, seed: int, fw: np.ndarray) -> np.ndarray:
    weave = 0.5 + 0.25 * (np.sin(2 * np.pi * 8 * u) + np.sin(2 * np.pi * 8 * v)) * _attenuate(
        8.0, fw)
    return 0.3 * weave + 0.7 * value_noise(u, v, seed, 2) * 0.6


def _screen(u: np.ndarray, v: np.ndarray, seed: int, fw: np.ndarray) -> np.ndarray:
    return 0.3 * value_noise(u * 0.5, v * 0.5, seed, 1)


def _poster(u: np.ndarray, v: np.ndarray, seed: int, fw: np.ndarray) -> np.ndarray:
    # Blocks of flat tone plus a disc: a picture's edges on a flat wall.
    cu, cv = np.floor(u * 3), np.floor(v * 3)
    block = _hash(cu, cv, seed)
    disc = (np.mod(u, 1.0) - 0.5) ** 2 + (np.mod(v, 1.0) - 0.5) ** 2 < 0.08
    return np.where(disc, 1.0 - block, block)


def _books(u: np.ndarray, v: np.ndarray, seed: int, fw: np.ndarray) -> np.ndarray:
    # Spines: vertical bands of random width-ish and tone along the shelf.
    return 0.15 + 0.85 * _hash(np.floor(u * 7.0), np.floor(v * 0.0), seed)


_PATTERNS = {
    "wood": _wood, "tiles": _tiles, "stripes": _stripes, "noise": _noise,
    "fabric": _fabric, "screen": _screen, "poster": _poster, "books": _books,
}
