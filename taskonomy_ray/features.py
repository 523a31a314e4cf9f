"""Stage 2a: each frozen source encoder encodes each image set once; transfers read the cache.

A cache entry is one `.npz` (representations + image ids) under `features/<source>/`, written in
one atomic `Storage.write_bytes`, keyed by a hash of everything that decides its contents.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .errors import ConfigError, StorageError, TrainingError
from .tables import Storage
from .tasks import get_task

FEATURES_DIR = "features"
FORMAT = 1  # bump when the file layout changes: old entries then miss and are recomputed
DTYPES = {"float16": np.float16, "float32": np.float32}

Encoder = Callable[[torch.Tensor], torch.Tensor]  # (B, 3, H, W) -> (B, C, h, w)


PathFn = Callable[[str, str], str]  # (source, image set name) -> storage-relative path


def keyed_paths(encoder_keys: Mapping[str, str], dtype: str = "float32") -> PathFn:
    """Default cache paths: `features/<source>/<image set>-<hash>.npz`.

    The hash covers the source, the key of its encoder weights (e.g. the gold unit's key, or
    `random-<seed>`), the image set and the dtype, so a retrained encoder never reads stale
    entries. The sweep may pass its own `PathFn` instead (its unit keys).
    """
    if dtype not in DTYPES:
        raise ConfigError(f"feature dtype {dtype!r}: choose one of {sorted(DTYPES)}")

    def path(source: str, imageset: str) -> str:
        get_task(source)
        if source not in encoder_keys:
            raise ConfigError(f"no encoder key for source {source!r}; known: "
                              f"{sorted(encoder_keys)}")
        doc = json.dumps({"format": FORMAT, "source": source, "encoder": encoder_keys[source],
                          "imageset": imageset, "dtype": dtype}, sort_keys=True)
        digest = hashlib.sha256(doc.encode()).hexdigest()[:16]
        return f"{FEATURES_DIR}/{source}/{imageset}-{digest}.npz"

    return path


@dataclass
class Features:
    """One source's cached representations of one image set, in the set's order."""

    images: list[str]
    array: np.ndarray  # (N, C, h, w), or (N, V, C, h, w) for multi-view samples

    def select(self, images: Sequence[str]) -> np.ndarray:
        """The rows of `images`, in that order; StorageError naming a missing image.

        The whole set in its own order (what a transfer unit asks for) is the array itself, not
        a copy: a 16k first-order unit would otherwise hold its 26 sources' 3.4 GB twice.
        """
        if len(images) == len(self.images) and all(a == b for a, b in zip(images, self.images)):
            return self.array
        index = {im: i for i, im in enumerate(self.images)}
        try:
            rows = [index[im] for im in images]
        except KeyError as e:
            raise StorageError(f"image {e.args[0]!r} is not in this feature cache entry; it was "
                               "made for another image set: re-run the cache step") from None
        return self.array[rows]

    @property
    def bytes_per_image(self) -> int:
        """Cache bytes per image (per sample of V views for multi-view sets)."""
        return int(self.array.nbytes // max(1, len(self.images)))


def _stack(part: Sequence[Mapping[str, Any]]) -> tuple[list[str], torch.Tensor]:
    """Ids and stacked images (B, 3, H, W) or (B, V, 3, H, W) of some samples."""
    return ([str(s["image"]) for s in part],
            torch.stack([torch.as_tensor(s["rgb"], dtype=torch.float32) for s in part]))


def _batches(samples: Sequence[Mapping[str, Any]], batch_size: int, num_workers: int
             ) -> Iterator[tuple[list[str], torch.Tensor]]:
    if num_workers:  # loader processes decode the next batches while this one is encoded
        yield from torch.utils.data.DataLoader(samples, batch_size=batch_size,
                                               num_workers=num_workers, collate_fn=_stack)
        return
    for start in range(0, len(samples), batch_size):
        yield _stack([samples[i] for i in range(start, min(len(samples), start + batch_size))])


View = Callable[[torch.Tensor, Sequence[str]], torch.Tensor]  # (images, their ids) -> input


def source_view(source: str) -> View | None:
    """What `source`'s encoder is shown of a batch of RGB images, when not the images themselves.

    Each encoder sees what it was trained on, as in Taskonomy's representation extraction:
    colorization lightness only, denoising the image with its noise (one draw per image, seeded
    by its id), inpainting the image with its centre hidden. Jigsaw sees the whole clean image
    (Taskonomy's extraction fed it the unshuffled image, not tiles), as do the other sources.
    """
    derived = get_task(source).derived
    if derived == "colorize":
        from .derived import lightness

        return lambda x, ids: torch.from_numpy(lightness(x.numpy()))
    if derived == "denoise":
        from .derived import noisy
        from .samples import image_seed

        return lambda x, ids: torch.stack([noisy(xi, image_seed(str(i), 0))
                                           for xi, i in zip(x, ids, strict=True)])
    if derived == "inpaint":
        from .derived import centre_masked

        return lambda x, ids: centre_masked(x)
    return None


@torch.no_grad()
def encode_samples(encoder: Encoder, samples: Sequence[Mapping[str, Any]], *,
                   batch_size: int = 64, dtype: str = "float32",
                   device: str | torch.device = "cpu", num_workers: int = 0,
                   view: View | None = None) -> Features:
    """Run a frozen encoder over samples (`image`, `rgb` (3,H,W) or (V,3,H,W)) in batches.

    `num_workers` loader processes read the samples (a dataset decoding files) ahead; `view`
    turns each batch of images into what the encoder takes (`source_view`).
    """
    if isinstance(encoder, torch.nn.Module):
        encoder.eval().to(device)
    images: list[str] = []
    chunks: list[np.ndarray] = []
    for ids, x in _batches(samples, batch_size, num_workers):
        x = view(x, ids) if view is not None else x
        lead = x.shape[:-3]
        z = encoder(x.reshape(-1, *x.shape[-3:]).to(device)).float().cpu()  # (B*V, C, h, w)
        chunks.append(z.reshape(*lead, *z.shape[1:]).numpy().astype(DTYPES[dtype]))
        images += ids
    if not images:
        raise ConfigError("no samples to encode: the image set is empty")
    return Features(images, np.concatenate(chunks))


def to_bytes(features: Features) -> bytes:
    """The `.npz` bytes of an entry (no pickles: ids are a unicode array)."""
    buf = io.BytesIO()
    np.savez(buf, features=features.array, images=np.asarray(features.images, dtype=np.str_))
    return buf.getvalue()


def from_bytes(data: bytes, where: str) -> Features:
    """Parse an entry; a corrupt one is a StorageError saying to delete and recompute it."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return Features([str(i) for i in z["images"]], np.asarray(z["features"]))
    except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise StorageError(f"corrupt feature cache entry {where} ({e}); delete it and re-run the "
                           "cache step") from e


@dataclass
class FeatureCache:
    """The representation cache of a run: where each (source, image set) lives, and the dtype.

    Entries are read once per process and kept (`load` is called by every transfer group).
    """

    storage: Storage
    path_of: PathFn
    dtype: str = "float32"  # float16 halves storage; see TransferConfig.feature_dtype
    _memo: dict[str, Features] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"feature dtype {self.dtype!r}: choose one of {sorted(DTYPES)}")

    def is_cached(self, source: str, imageset: str) -> bool:
        """Whether the entry exists (a unit is done when its output exists)."""
        return self.storage.exists(self.path_of(source, imageset))

    def ensure(self, source: str, imageset: str, encoder: Encoder | Callable[[], Encoder],
               samples: Sequence[Mapping[str, Any]], *, images: Sequence[str] | None = None,
               batch_size: int = 64, lazy: bool = False,
               device: str | torch.device = "cpu", num_workers: int = 0,
               refresh: bool = False) -> str:
        """Encode `samples` with `source`'s frozen encoder unless cached; returns the path.

        With `lazy=True`, `encoder` is a zero-argument loader called only on a miss, so a hit
        never loads weights; `images` (the samples' ids, e.g. `dataset.images`) lets a hit skip
        reading samples. The entry is written in one atomic write after every batch succeeded:
        a crash leaves no entry, never half of one. `refresh`: encode even if cached, replacing
        the entry once the new one is whole (its encoder changed since).
        """
        rel = self.path_of(source, imageset)
        if self.storage.exists(rel) and not refresh:
            return rel
        enc = encoder() if lazy else encoder  # type: ignore[call-arg]
        feats = encode_samples(enc, samples, batch_size=batch_size, dtype=self.dtype,
                               device=device, num_workers=num_workers,
                               view=source_view(source))
        if images is not None and feats.images != [str(i) for i in images]:
            raise ConfigError(f"the samples' ids differ from the `images` given for {source!r}; "
                              "pass the dataset's ids in sample order")
        finite = np.isfinite(feats.array.reshape(len(feats.images), -1)).all(1)
        if not finite.all():  # cached, they would fail every transfer from this source
            bad = [feats.images[i] for i in np.flatnonzero(~finite)]
            raise TrainingError(
                f"{source!r}'s representations of image set {imageset!r} are not finite on "
                f"{len(bad)} of {len(finite)} images (first: {bad[0]}); nothing was cached. "
                "Its gold network may have diverged: check its training loss, and retrain with "
                "other network.train settings (a new run: they are in every unit's key)"
                + (", or float16 overflowed: set transfer.feature_dtype: float32"
                   if self.dtype == "float16" else ""))
        self.storage.write_bytes(rel, to_bytes(feats))
        self._memo[rel] = feats
        return rel

    def load(self, source: str, imageset: str, images: Sequence[str]) -> np.ndarray:
        """Representations of `images` (in that order); StorageError if not cached."""
        rel = self.path_of(source, imageset)
        if rel not in self._memo:
            if not self.storage.exists(rel):
                raise StorageError(f"no cached representations of image set {imageset!r} for "
                                   f"source {source!r} ({self.storage.path(rel)}); run the "
                                   "feature cache step (features.FeatureCache.ensure) first")
            self._memo[rel] = from_bytes(self.storage.read_bytes(rel), self.storage.path(rel))
        return self._memo[rel].select(images)

    def forget(self, source: str, imageset: str) -> None:
        """Drop a loaded entry from this process's memory (it stays in storage)."""
        self._memo.pop(self.path_of(source, imageset), None)


# ---------------------------------------------------------------- image sets

TEST = "test"


def imageset_name(target: str | None, regime: int | None) -> str:
    """Name of the image set a transfer reads: `r<regime>` (training subset) or `test`.

    Single-view targets share these sets; a multi-view target's samples are groups of views, so
    its sets are its own (`r<regime>-<target>`, `test-<target>`), each view encoded separately.
    """
    base = TEST if regime is None else f"r{int(regime)}"
    if target is not None and get_task(target).views > 1:
        return f"{base}-{target}"
    return base


def parse_imageset(name: str) -> tuple[int | None, str | None]:
    """(regime or None for test, multi-view target or None) of an image set name."""
    base, _, target = name.partition("-")
    if target:
        get_task(target)
    if base == TEST:
        return None, target or None
    if base.startswith("r") and base[1:].isdigit() and int(base[1:]) > 0:
        return int(base[1:]), target or None
    raise ConfigError(f"image set {name!r}: expected `test` or `r<images>`, optionally "
                      "followed by `-<multi-view target>`")


def open_imageset(data_root: str, imageset: str, *, image_size: int, tasks: Sequence[str] = (),
                  splits: Any = None, subset_seed: int = 0) -> Any:
    """The TaskonomyDataset of an image set (with the labels of `tasks`, if any).

    Training subsets are `dataset.regime_dataset` (held out from the task networks' training
    data, as in the paper); the test set is the test split. Features and labels both come from
    here, so their samples are the same, in the same order.
    """
    from .dataset import TaskonomyDataset, regime_dataset

    regime, multi = parse_imageset(imageset)
    wanted = list(tasks)
    if multi is not None:
        if wanted not in ([], [multi]):
            raise ConfigError(f"image set {imageset!r} holds samples of {multi} only")
        wanted = [multi]
    kw = {"splits": splits, "size": image_size}
    if regime is None:
        return TaskonomyDataset(data_root, wanted, split=TEST, **kw)
    return regime_dataset(data_root, wanted, regime, seed=subset_seed, **kw)


def cache_imageset(cache: FeatureCache, source: str, imageset: str,
                   encoder: Callable[[], Encoder], data_root: str, *, image_size: int,
                   splits: Any = None, subset_seed: int = 0, batch_size: int = 64,
                   device: str | torch.device = "cpu") -> str:
    """One feature-cache unit: encode image set `imageset` with `source`'s encoder, once.

    `encoder` is a zero-argument loader (see `encoder_loader`), called only when the entry is
    missing. Returns the entry's storage-relative path.
    """
    if cache.is_cached(source, imageset):
        return cache.path_of(source, imageset)
    data = open_imageset(data_root, imageset, image_size=image_size, splits=splits,
                         subset_seed=subset_seed)
    return cache.ensure(source, imageset, encoder, data, images=data.images,
                        batch_size=batch_size, lazy=True, device=device)


def encoder_loader(source: str, checkpoint: str | None, model: Any, *, random_seed: int = 0
                   ) -> Callable[[], Encoder]:
    """A loader of `source`'s frozen encoder: the gold checkpoint's, or the fixed-seed random one.

    `random_seed` must be the seed of the run's `random` baseline (models.random_encoder).
    """
    def load() -> Encoder:
        if source == "random":
            from .models import random_encoder

            return random_encoder(model, random_seed)
        if checkpoint is None:
            raise ConfigError(f"source {source!r} needs its gold checkpoint; train it first")
        from .training import load_encoder

        return load_encoder(checkpoint)

    get_task(source)
    return load


def imagesets(targets: Sequence[str], regimes: Sequence[int]) -> list[str]:
    """Every image set a sweep caches per source: `test`, `r<regime>`, and multi-view targets'."""
    names = [imageset_name(t, r) for r in [None, *regimes] for t in [None, *targets]]
    return list(dict.fromkeys(names))
