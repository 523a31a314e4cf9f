"""Mini-Taskonomy rendering, step 6: the image-processing domains of a rendered view.

edge_texture (Canny on RGB), edge_occlusion (depth discontinuities from the exact geometry),
keypoints2d (Harris on RGB), keypoints3d (where normals vary in two directions), and the
unsupervised over-segmentations (Felzenszwalb-Huttenlocher on RGB, and on RGB + depth + normals).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import ndimage
from skimage.feature import canny, corner_harris
from skimage.segmentation import felzenszwalb

from .shading import View

# A 1-pixel line blurred by a Gaussian of sigma s peaks at 1/(sqrt(2 pi) s): rescaled to 1.
EDGE_BLUR = 0.7
CANNY_LOW, CANNY_HIGH = 0.05, 0.12
OCCLUSION_STRETCH = 1.0  # a step over this many pixel footprints is a discontinuity
HARRIS_SCALE = 0.15  # Harris response mapped to 1 - exp(-r / scale)
NORMAL_SPREAD_SCALE = 0.08  # second eigenvalue of the local normal covariance mapped likewise
MAX_SEGMENTS = 256  # segment ids are stored in 8 bits


def _scale(size: int) -> float:
    """Image-space filter widths grow with resolution so a 256 px view matches a 64 px one."""
    return max(1.0, size / 96.0)


def grey(rgb: np.ndarray) -> np.ndarray:
    """Luma (ITU-R BT.601 weights) of an RGB image in [0, 1]."""
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def soft_lines(mask: np.ndarray, size: int) -> np.ndarray:
    """A binary edge map blurred into [0, 1] so a one-pixel line peaks at 1."""
    s = EDGE_BLUR * _scale(size)
    blurred = ndimage.gaussian_filter(mask.astype(np.float64), s, mode="nearest")
    return np.clip(blurred * np.sqrt(2 * np.pi) * s, 0.0, 1.0).astype(np.float32)


def edge_texture(rgb: np.ndarray) -> np.ndarray:
    """Canny edges of the image's luma: texture, shading and object outlines alike."""
    size = rgb.shape[0]
    edges = canny(grey(rgb), sigma=_scale(size), low_threshold=CANNY_LOW,
                  high_threshold=CANNY_HIGH)
    return soft_lines(edges, size)


def occlusion_mask(view: View, fov: float) -> np.ndarray:
    """Pixels on the near side of a depth discontinuity (or next to a window opening).

    Neighbours p, q on different surfaces are discontinuous when their euclidean depths differ by
    more than OCCLUSION_STRETCH x the sum of their pixel footprints on the surface (depth x pixel
    angle / |cos incidence|), which a crease (wall meets floor) never exceeds at any angle.
    """
    size = view.rgb.shape[0]
    t, valid = view.depth_euclidean.astype(np.float64), view.valid
    cos_inc = np.abs(view.reshading.astype(np.float64))
    foot = t * (fov / size) / np.maximum(cos_inc, 0.15)
    out = np.zeros((size, size), bool)
    for axis in (0, 1):
        a = [slice(None), slice(None)]
        b = [slice(None), slice(None)]
        a[axis], b[axis] = slice(0, -1), slice(1, None)
        ta, tb = t[tuple(a)], t[tuple(b)]
        va, vb = valid[tuple(a)], valid[tuple(b)]
        other = view.surface[tuple(a)] != view.surface[tuple(b)]
        jump = other & (np.abs(ta - tb) > OCCLUSION_STRETCH * (foot[tuple(a)] + foot[tuple(b)]))
        jump |= va != vb  # geometry next to a window opening
        out[tuple(a)] |= jump & va & (~vb | (ta < tb))
        out[tuple(b)] |= jump & vb & (~va | (tb < ta))
    return out


def edge_occlusion(view: View, fov: float) -> np.ndarray:
    """Occlusion edges: blurred near-side outlines of depth discontinuities."""
    return soft_lines(occlusion_mask(view, fov), view.rgb.shape[0])


def keypoints2d(rgb: np.ndarray) -> np.ndarray:
    """Harris corner response of the luma, squashed into [0, 1]."""
    r = corner_harris(grey(rgb), method="k", k=0.05, sigma=_scale(rgb.shape[0]))
    return (1.0 - np.exp(-np.maximum(r, 0.0) / HARRIS_SCALE)).astype(np.float32)


def keypoints3d(view: View) -> np.ndarray:
    """3D interest: the second eigenvalue of the local covariance of surface normals.

    It is near zero on planes (one normal) and creases (normals vary along one direction), and
    large at corners where three faces meet and on doubly curved surfaces.
    """
    valid = view.valid.astype(np.float64)
    n = np.where(view.valid[..., None], view.normal.astype(np.float64), 0.0)
    s = 1.5 * _scale(n.shape[0])

    def smooth(x: np.ndarray) -> np.ndarray:  # normalised convolution: windows do not count
        return ndimage.gaussian_filter(x, s, mode="nearest") / np.maximum(weight, 1e-6)

    weight = ndimage.gaussian_filter(valid, s, mode="nearest")
    mean = [smooth(n[..., i]) for i in range(3)]
    cov = np.empty(n.shape[:2] + (3, 3))
    for i in range(3):
        for j in range(i, 3):
            cov[..., i, j] = cov[..., j, i] = smooth(n[..., i] * n[..., j]) - mean[i] * mean[j]
    lam = np.linalg.eigvalsh(cov)[..., 1]  # ascending: the middle eigenvalue
    return (1.0 - np.exp(-np.maximum(lam, 0.0) / NORMAL_SPREAD_SCALE)).astype(np.float32)


def _segments(image: np.ndarray, scale: float, min_size: int) -> np.ndarray:
    """Felzenszwalb segments as uint8 ids, coarsened until they fit in 8 bits."""
    while True:
        with warnings.catch_warnings():  # skimage warns on more than 3 channels, which we mean
            warnings.filterwarnings("ignore", "Got image with third dimension")
            seg = felzenszwalb(image, scale=scale, sigma=0.5, min_size=min_size, channel_axis=-1)
        if seg.max() < MAX_SEGMENTS:
            return seg.astype(np.uint8)
        scale, min_size = scale * 2, min_size * 2


def segment_unsup2d(rgb: np.ndarray) -> np.ndarray:
    """Over-segmentation of the RGB image alone."""
    size = rgb.shape[0]
    return _segments(rgb.astype(np.float64), 1.5 * size, max(4, size * size // 400))


def segment_unsup25d(view: View) -> np.ndarray:
    """Over-segmentation of RGB, log depth and normals stacked (7 channels)."""
    size = view.rgb.shape[0]
    depth = np.where(view.valid, np.log1p(view.depth_zbuffer.astype(np.float64)), 0.0)
    stack = np.concatenate([view.rgb.astype(np.float64), 0.5 * view.normal.astype(np.float64),
                            0.25 * depth[..., None]], axis=-1)
    return _segments(stack, 1.5 * size, max(4, size * size // 400))


def image_domains(view: View, fov: float) -> dict[str, np.ndarray]:
    """Every domain computed from the view's buffers by image processing."""
    return {
        "edge_texture": edge_texture(view.rgb),
        "edge_occlusion": edge_occlusion(view, fov),
        "keypoints2d": keypoints2d(view.rgb),
        "keypoints3d": keypoints3d(view),
        "segment_unsup2d": segment_unsup2d(view.rgb),
        "segment_unsup25d": segment_unsup25d(view),
    }
