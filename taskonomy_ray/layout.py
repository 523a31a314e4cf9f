"""The Taskonomy dataset layout: file names and each domain's on-disk encoding, read and write.

The release is organised per building as
`<root>/<building>/<domain>/point_<i>_view_<j>_domain_<domain>.<ext>`; the encodings below follow
the release's documentation (StanfordVL/taskonomy `data/README.md`) and its loaders, cited per
domain. The built-in renderer writes through this same codec, so one loader serves both.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import point_info
from .errors import DataError, unknown_name

# Depth: 16-bit PNG in units of 1/512 m, so at most 65535/512 = 128 m; the release marks pixels
# without geometry (windows, sky, holes in the mesh) with values at or above 64500.
DEPTH_UNITS_PER_METRE = 512.0
DEPTH_INVALID_RAW = 64500
# Normals and curvature: 8-bit, 127 encodes zero (release README).
CENTRE_8BIT = 127.0
NORMAL_SCALE = 127.0  # unit normal component n -> 127 + 127 n
# The release does not document curvature's physical scale; ours: 16 units per 1/m, so curvature
# of a 0.125 m radius cylinder (8/m) encodes as 127 + 128 -> clipped to 255. Kept documented here.
CURVATURE_SCALE = 16.0
UINT16_MAX = 65535.0
PNG_COMPRESS_LEVEL = 6  # fixed, so the same array always gives the same bytes

# A folder modified this recently is listed afresh: a later change could share its mtime.
RACY_S = 2.0
_NAME_RE = re.compile(r"^point_(\d+)_view_(\d+)_domain_([a-z0-9_]+)\.(png|npy|json)$")


@dataclass(frozen=True)
class Domain:
    """One dataset domain: file type, storage type and what the decoded array means."""

    name: str
    ext: str  # png, npy, json
    storage: str  # rgb8, grey8, grey16, ids8, float_npy, json
    decoded: str  # meaning of the decoded value


DOMAINS: dict[str, Domain] = {
    d.name: d
    for d in (
        Domain("rgb", "png", "rgb8", "float32 (H, W, 3) in [0, 1]"),
        Domain("depth_zbuffer", "png", "grey16", "float32 (H, W) metres along the optical axis"),
        Domain("depth_euclidean", "png", "grey16", "float32 (H, W) metres from the camera centre"),
        Domain("normal", "png", "rgb8", "float32 (H, W, 3) camera-frame normal in [-1, 1]"),
        Domain("reshading", "png", "grey8", "float32 (H, W) shading in [0, 1]"),
        Domain("principal_curvature", "png", "rgb8", "float32 (H, W, 2) curvatures in 1/m"),
        Domain("edge_texture", "png", "grey16", "float32 (H, W) edge strength in [0, 1]"),
        Domain("edge_occlusion", "png", "grey16", "float32 (H, W) edge strength in [0, 1]"),
        Domain("keypoints2d", "png", "grey16", "float32 (H, W) response in [0, 1]"),
        Domain("keypoints3d", "png", "grey16", "float32 (H, W) response in [0, 1]"),
        Domain("segment_unsup2d", "png", "ids8", "uint8 (H, W) segment ids"),
        Domain("segment_unsup25d", "png", "ids8", "uint8 (H, W) segment ids"),
        Domain("segment_semantic", "png", "ids8",
               "uint8 (H, W) class ids: 0 uncertain, 1 background, 2.. object classes"),
        Domain("class_object", "npy", "float_npy", "float32 (C,) distribution over objects"),
        Domain("class_scene", "npy", "float_npy", "float32 (C,) distribution over scenes"),
        Domain("point_info", "json", "json", "dict: camera pose, fov, fixated point, layout"),
    )
}
DEPTH_DOMAINS = ("depth_zbuffer", "depth_euclidean")
INFO_FILE = "dataset_info.json"  # optional: class names and generator facts (not in the release)

# point_info keys the loaders read. Names follow the release's point_info where it has one
# (camera_location, field_of_view_rads, point_uuid, view_id); the matrix form and the layout and
# vanishing-point parameters are this project's, which `point_info.from_release` derives from a
# release record (its Euler angles and room box) as the file is read.
POINT_INFO_KEYS = {
    "building": str,
    "point": int,
    "view_id": int,
    "camera_location": 3,  # world position, metres
    "camera_rotation_matrix": (3, 3),  # world-from-camera; camera looks down -z, y up (Blender)
    "field_of_view_rads": float,
    "point_location": 3,  # the fixated 3D point, world
    "room_layout": 9,  # room box in the camera frame: centre (3), size (3), rotation (3)
    "vanishing_points_gaussian_sphere": 9,  # the 3 Manhattan directions, camera frame
}
# Keys a release record may lack (its room box, say): the tasks that need them say so by name.
# The renderer writes every key, so a rendered record without one is damaged.
OPTIONAL_INFO_KEYS = ("point_location", "room_layout", "vanishing_points_gaussian_sphere")


def domain(name: str) -> Domain:
    """The `Domain` of `name`, with close matches on a typo."""
    try:
        return DOMAINS[name]
    except KeyError:
        raise unknown_name("domain", name, DOMAINS) from None


def filename(point: int, view: int, domain_name: str) -> str:
    """The release's file name of one view of one point in one domain."""
    return f"point_{point}_view_{view}_domain_{domain_name}.{domain(domain_name).ext}"


def path_for(root: str | Path, building: str, point: int, view: int, domain_name: str) -> Path:
    """Where a file lives: `<root>/<building>/<domain>/<filename>`."""
    return Path(root) / building / domain_name / filename(point, view, domain_name)


def parse_filename(name: str) -> tuple[int, int, str]:
    """(point, view, domain) of a release file name; DataError if it is not one."""
    m = _NAME_RE.match(name)
    if not m or m.group(3) not in DOMAINS or DOMAINS[m.group(3)].ext != m.group(4):
        raise DataError(
            f"{name!r} is not a Taskonomy file name; expected "
            "point_<i>_view_<j>_domain_<domain>.<png|npy|json>"
        )
    return int(m.group(1)), int(m.group(2)), m.group(3)


# ---------------------------------------------------------------- encode / decode (pure)


def encode(domain_name: str, value: Any) -> bytes:
    """The file bytes of a decoded value, in the release's encoding."""
    d = domain(domain_name)
    if d.storage == "json":
        check_point_info(value, where=domain_name, complete=True)
        return (json.dumps(value, sort_keys=True, indent=1) + "\n").encode()
    arr = np.asarray(value)
    if d.storage == "float_npy":
        buf = io.BytesIO()
        np.save(buf, _expect(arr, 1, d).astype(np.float32), allow_pickle=False)
        return buf.getvalue()
    return _png_bytes(_quantise(d, arr))


def decode(domain_name: str, data: bytes, path: str | Path | None = None) -> Any:
    """The decoded value of file bytes (see `DOMAINS` for what each decodes to).

    A release's point_info is rewritten in this project's form (`point_info.from_release`),
    which needs the file's `path` for the building, point and view its record lacks.
    """
    d = domain(domain_name)
    if d.storage == "json":
        info = json.loads(data.decode())
        release = point_info.is_release_record(info)
        if release:
            if path is None:
                raise DataError(f"{domain_name}: a release point_info record needs its file path "
                                "(building, point, view); read it with layout.read_path")
            point, view, _ = parse_filename(Path(path).name)
            info = point_info.from_release(info, Path(path).parent.parent.name, point, view,
                                           where=domain_name)
        # A rendered record holds every key; a release record may lack its room box.
        check_point_info(info, where=domain_name, complete=not release)
        return info
    if d.storage == "float_npy":
        vec = np.load(io.BytesIO(data), allow_pickle=False).astype(np.float32)
        return _expect(vec, 1, d, what="a saved vector")
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        raw = np.asarray(im)
    if d.storage == "grey16" and raw.dtype == np.uint8:
        # An 8-bit file would decode to 1/256 of its values (depth in metres, edge strength).
        raise DataError(f"{d.name}: expected a 16-bit PNG, got an 8-bit one")
    return _dequantise(d, raw)


def _expect(arr: np.ndarray, ndim: int, d: Domain, channels: int | None = None,
            what: str = "an array") -> np.ndarray:
    """`arr` if it has the domain's number of dimensions (and channels) and finite values."""
    if arr.ndim != ndim or (channels is not None and arr.shape[-1] != channels):
        shape = "(H, W)" if ndim == 2 else ("(C,)" if ndim == 1 else f"(H, W, {channels})")
        raise DataError(f"{d.name}: expected {what} of shape {shape}, got {arr.shape}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise DataError(f"{d.name}: {what} has non-finite values")
    return arr


def _quantise(d: Domain, arr: np.ndarray) -> np.ndarray:
    name = d.name
    if name == "rgb":
        return np.clip(np.rint(_expect(arr, 3, d, 3) * 255.0), 0, 255).astype(np.uint8)
    if name in DEPTH_DOMAINS:
        raw = np.rint(_expect(arr, 2, d) * DEPTH_UNITS_PER_METRE)
        return np.clip(raw, 0, UINT16_MAX).astype(np.uint16)
    if name == "normal":
        raw = CENTRE_8BIT + NORMAL_SCALE * _expect(arr, 3, d, 3)
        return np.clip(np.rint(raw), 0, 255).astype(np.uint8)
    if name == "principal_curvature":
        k = _expect(arr, 3, d, 2)
        raw = np.zeros(k.shape[:2] + (3,), np.float64)
        raw[..., :2] = CENTRE_8BIT + CURVATURE_SCALE * k
        return np.clip(np.rint(raw), 0, 255).astype(np.uint8)
    if name == "reshading":
        return np.clip(np.rint(_expect(arr, 2, d) * 255.0), 0, 255).astype(np.uint8)
    if d.storage == "grey16":
        return np.clip(np.rint(_expect(arr, 2, d) * UINT16_MAX), 0, UINT16_MAX).astype(np.uint16)
    if d.storage == "ids8":
        ids = _expect(arr, 2, d)
        if ids.dtype.kind == "f" or ids.min(initial=0) < 0 or ids.max(initial=0) > 255:
            raise DataError(f"{name}: segment ids must be integers in 0..255")
        return ids.astype(np.uint8)
    raise AssertionError(f"no quantiser for {name}")  # every png domain is handled above


def _dequantise(d: Domain, raw: np.ndarray) -> np.ndarray:
    name = d.name
    if d.storage == "rgb8" and (raw.ndim != 3 or raw.shape[2] < 3):
        raise DataError(f"{name}: expected an RGB PNG, got an array of shape {raw.shape}")
    if d.storage in ("grey8", "grey16", "ids8") and raw.ndim == 3:
        raw = raw[..., 0]  # some release files store grey maps as RGB
    if name == "rgb":
        return raw[..., :3].astype(np.float32) / 255.0
    if name in DEPTH_DOMAINS:
        return raw.astype(np.float32) / DEPTH_UNITS_PER_METRE
    if name == "normal":
        return (raw[..., :3].astype(np.float32) - CENTRE_8BIT) / NORMAL_SCALE
    if name == "principal_curvature":
        return (raw[..., :2].astype(np.float32) - CENTRE_8BIT) / CURVATURE_SCALE
    if name == "reshading":
        return raw.astype(np.float32) / 255.0
    if d.storage == "grey16":
        return raw.astype(np.float32) / UINT16_MAX
    return raw.astype(np.uint8)


def depth_valid(depth_m: np.ndarray) -> np.ndarray:
    """Boolean mask of pixels with real geometry (the release's invalid marker excluded)."""
    return depth_m < DEPTH_INVALID_RAW / DEPTH_UNITS_PER_METRE


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def check_point_info(info: Any, where: str = "point_info", complete: bool = False) -> None:
    """Raise DataError unless `info` has the keys loaders need, each of the right shape.

    `complete` asks for the optional keys too (what the renderer writes).
    """
    if not isinstance(info, dict):
        raise DataError(f"{where}: point_info must be a JSON object, got {type(info).__name__}")
    for key, kind in POINT_INFO_KEYS.items():
        if key not in info:
            if key in OPTIONAL_INFO_KEYS and not complete:
                continue
            needed = sorted(k for k in POINT_INFO_KEYS if complete or k not in OPTIONAL_INFO_KEYS)
            hint = (" (or, in a release's record, camera_rotation_final)"
                    if key == "camera_rotation_matrix" else "")
            raise DataError(f"{where}: point_info lacks {key!r}{hint}; it needs {needed}")
        v = info[key]
        if isinstance(kind, type):
            ok = isinstance(v, kind) or (kind is float and isinstance(v, int))
        else:
            shape = (kind,) if isinstance(kind, int) else kind
            try:
                ok = np.asarray(v, dtype=np.float64).shape == shape
                ok = ok and bool(np.isfinite(np.asarray(v, dtype=np.float64)).all())
            except (TypeError, ValueError):
                ok = False
        if not ok:
            raise DataError(f"{where}: point_info[{key!r}] should be {kind}, got {v!r}")


# ---------------------------------------------------------------- files


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file and a rename, so readers never see half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write(root: str | Path, building: str, point: int, view: int, domain_name: str,
          value: Any) -> Path:
    """Encode `value` and write it where the release would keep it; returns the path."""
    path = path_for(root, building, point, view, domain_name)
    write_bytes_atomic(path, encode(domain_name, value))
    return path


def read(root: str | Path, building: str, point: int, view: int, domain_name: str) -> Any:
    """Read and decode one file; a missing or corrupt file gets a DataError naming it."""
    return read_path(path_for(root, building, point, view, domain_name), domain_name)


def read_path(path: str | Path, domain_name: str) -> Any:
    """Decode the file at `path` as `domain_name`, with an error that names the file and fix."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(
            f"missing file {path}: the dataset root lacks this {domain_name} file; download "
            "or re-render it, or load with on_bad_file='skip' to skip such samples"
        ) from None
    try:
        return decode(domain_name, data, path)
    except DataError as e:
        raise DataError(f"{path}: {e}; re-download or re-render this file, or load with "
                        "on_bad_file='skip'") from e
    except Exception as e:  # PIL, numpy and json raise many types on corrupt bytes
        raise DataError(
            f"corrupt file {path}: cannot decode it as {domain_name} ({type(e).__name__}: {e}); "
            "re-download or re-render it, or load with on_bad_file='skip'"
        ) from e


def buildings(root: str | Path) -> list[str]:
    """Sorted building folders under `root` (those holding an `rgb` folder)."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DataError(f"dataset root {root} is a file, not a folder; give the folder that "
                        "holds the buildings (each with its rgb/ folder)")
    if not root.is_dir():
        raise DataError(f"dataset root {root} does not exist; render one with "
                        "`taskonomy-ray synth` or point to a Taskonomy download")
    return sorted(p.name for p in root.iterdir() if (p / "rgb").is_dir())


def scan(root: str | Path, building: str, domain_name: str = "rgb") -> Iterator[tuple[int, int]]:
    """(point, view) pairs present in one building's domain folder, sorted.

    A release building holds tens of thousands of files and a sweep opens a dataset per task, so
    a folder's listing is kept while the folder is unchanged (same inode and modification time,
    last modified over RACY_S ago: a change within the clock's resolution could not be seen).
    """
    folder = Path(root) / building / domain_name
    st = os.stat(folder)
    if time.time() - st.st_mtime <= RACY_S:
        return iter(_list_views(str(folder), domain_name))
    return iter(_listing(str(folder.resolve()), domain_name, st.st_ino, st.st_mtime_ns))


@lru_cache(maxsize=1024)
def _listing(folder: str, domain_name: str, inode: int,
             mtime_ns: int) -> tuple[tuple[int, int], ...]:
    """`_list_views` kept per folder state (inode and mtime are the cache key, not read here)."""
    return _list_views(folder, domain_name)


def _list_views(folder: str, domain_name: str) -> tuple[tuple[int, int], ...]:
    found = []
    for entry in os.scandir(folder):
        m = _NAME_RE.match(entry.name)
        if m and m.group(3) == domain_name:
            found.append((int(m.group(1)), int(m.group(2))))
    return tuple(sorted(found))


def read_info(root: str | Path) -> dict[str, Any]:
    """The optional `dataset_info.json` (class names etc.); {} for a real release root."""
    path = Path(root) / INFO_FILE
    if not path.exists():
        return {}
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"corrupt {path}: {e}; re-render the dataset or delete the file") from e
    if not isinstance(info, dict):
        raise DataError(f"{path} must hold a JSON object")
    return info


def write_info(root: str | Path, info: dict[str, Any]) -> None:
    """Write `dataset_info.json` atomically."""
    write_bytes_atomic(Path(root) / INFO_FILE,
                       (json.dumps(info, sort_keys=True, indent=1) + "\n").encode())
