"""Stage 2's labels: a target's labels of an image set, held compactly or read batch by batch.

A transfer unit holds its regime's labels while they fit a memory bound and reads everything
else (the test set, paper-scale dense training sets) a batch at a time, loader processes reading
ahead, so a unit's memory does not grow with the data (`transfer.take` reads either kind).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .errors import DataError
from .transfer import TransferConfig, batches


def label_keys(target: str) -> tuple[str, str]:
    """The sample keys of a target's labels: the label and, for masked tasks, its mask."""
    return target, f"{target}_mask"


def read_rows(dataset: Any, rows: Sequence[int], keys: Sequence[str]
              ) -> tuple[list[str], dict[str, torch.Tensor]]:
    """Image ids and the stacked `keys` (those the samples have) of samples `rows` of a dataset.

    Transfers need every sample of their image sets, so an unreadable one is a DataError.
    """
    images: list[str] = []
    cols: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    for i in rows:
        sample = dataset[i]
        if "skipped" in sample:
            raise DataError(f"sample {sample['image']} is unreadable ({sample['reason']}); "
                            "transfers need every sample of their image sets: fix the file")
        images.append(str(sample["image"]))
        for k in keys:
            if k in sample:
                cols[k].append(torch.as_tensor(sample[k]))
    return images, {k: torch.stack(v) for k, v in cols.items() if v}


def compact(t: torch.Tensor) -> torch.Tensor:
    """Integer labels in the narrowest dtype that holds them (class ids: uint8, 1/8 of int64).

    `transfer.take` widens each batch back to int64; floats and masks are kept as they are.
    """
    if t.is_floating_point() or t.dtype == torch.bool or t.numel() == 0:
        return t
    lo, hi = int(t.min()), int(t.max())
    for dtype in (torch.uint8, torch.int16, torch.int32):
        info = torch.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return t.to(dtype)
    return t


def load_labels(dataset: Any, target: str) -> tuple[list[str], dict[str, torch.Tensor]]:
    """Image ids and stacked label tensors (`<target>`, `<target>_mask`) of a whole dataset."""
    images, cols = read_rows(dataset, range(len(dataset)), label_keys(target))
    return images, {k: compact(v) for k, v in cols.items()}


class _BatchReads(torch.utils.data.Dataset):
    """Batch number -> that batch's stacked labels: what loader workers read ahead."""

    def __init__(self, dataset: Any, order: Sequence[tuple[int, ...]], keys: Sequence[str]
                 ) -> None:
        self.dataset, self.order, self.keys = dataset, order, keys

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return read_rows(self.dataset, self.order[i], self.keys)[1]


class StreamedLabels:
    """Labels of a dataset read when a batch of rows is asked for (`transfer.LabelRows`).

    Memory stays one batch whatever the set's size; every head of a fused group shares each
    read, and asking for the same rows twice in a row reads them once (`reads` counts reads).
    Given the `order` batches will be asked in and `workers` > 0, loader processes read the
    next batches ahead (decoding PNGs is the CPU's work while the GPU trains); a batch asked out
    of that order is read directly, and asking for the first batch again starts the order over.
    """

    def __init__(self, dataset: Any, keys: Sequence[str], *,
                 order: Sequence[torch.Tensor] | None = None, workers: int = 0) -> None:
        self.dataset, self.keys, self.reads = dataset, tuple(keys), 0
        self.order = [tuple(int(i) for i in b.tolist()) for b in order or []]
        self.workers = workers
        self._ahead: Any = None
        self._next = 0
        self._last: tuple[tuple[int, ...], dict[str, torch.Tensor]] | None = None

    def rows(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """The stacked labels of samples `idx`."""
        key = tuple(int(i) for i in idx.tolist())
        if self._last is None or self._last[0] != key:
            self._last = key, self._read(key)
            self.reads += 1
        return self._last[1]

    def _read(self, key: tuple[int, ...]) -> dict[str, torch.Tensor]:
        if not (self.workers and self.order):
            return read_rows(self.dataset, key, self.keys)[1]
        if key == self.order[0] and self._next != 0:
            self._ahead = None  # the order starts over (the next chunk of heads)
        if self._ahead is None:
            reads = _BatchReads(self.dataset, self.order, self.keys)
            self._ahead = iter(torch.utils.data.DataLoader(
                reads, batch_size=None, num_workers=self.workers, prefetch_factor=2))
            self._next = 0
        if self._next < len(self.order) and key == self.order[self._next]:
            self._next += 1
            return dict(next(self._ahead))
        return read_rows(self.dataset, key, self.keys)[1]


def training_labels(dataset: Any, target: str, cfg: TransferConfig
                    ) -> dict[str, torch.Tensor] | StreamedLabels:
    """The regime's labels: in memory when they fit `cfg.label_memory_gb`, else streamed.

    The size is judged from the first sample, before anything else is read. Streamed labels
    are read ahead in the training's batch order by `cfg.num_workers` loader processes.
    """
    first = read_rows(dataset, [0], label_keys(target))[1]
    per_sample = sum(compact(v).element_size() * v[0].numel() for v in first.values())
    if per_sample * len(dataset) <= cfg.label_memory_gb * 1024**3:
        return load_labels(dataset, target)[1]
    return StreamedLabels(dataset, label_keys(target), order=batches(len(dataset), cfg),
                          workers=cfg.num_workers)


def evaluation_labels(dataset: Any, target: str, cfg: TransferConfig) -> StreamedLabels:
    """The test set's labels, read batch by batch in evaluation order (any size fits)."""
    n, size = len(dataset), cfg.eval_batch_size
    order = [torch.arange(i, min(n, i + size)) for i in range(0, n, size)]
    return StreamedLabels(dataset, label_keys(target), order=order, workers=cfg.num_workers)
