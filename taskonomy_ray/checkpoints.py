"""Where a training keeps its resume point: the `Hooks` protocol and its local-directory form.

The training loop (training.py) only talks to a `Hooks` object, so the same loop checkpoints to
a local folder (`LocalHooks`), to run storage (sweep/units.py) or under Ray Train
(sweep/train_runner.py).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

import torch

from .errors import TrainingError

CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.jsonl"


class Hooks(Protocol):
    """Where a training loop keeps its checkpoints and sends its metrics.

    `load()` returns the last saved state (or None: start fresh); `save(state, metrics)` keeps a
    checkpoint (a dict of tensors and plain values, see `training._state`) with the metrics of
    that step; `report(metrics)` sends metrics without a checkpoint. A Ray Train runner
    implements `save` as `ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d))`
    after `torch.save(state, d / "checkpoint.pt")`, and `load` from `ray.train.get_checkpoint()`.
    """

    def load(self) -> dict[str, Any] | None: ...

    def save(self, state: dict[str, Any], metrics: dict[str, Any]) -> None: ...

    def report(self, metrics: dict[str, Any]) -> None: ...


class LocalHooks:
    """Checkpoints in a local directory, metrics appended to `metrics.jsonl`.

    `checkpoint.pt` is replaced atomically; with no directory nothing is kept.
    """

    def __init__(self, directory: str | Path | None = None) -> None:
        self.dir = Path(directory) if directory is not None else None

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is none yet."""
        if self.dir is None or not (self.dir / CHECKPOINT_FILE).exists():
            return None
        return load_checkpoint(self.dir / CHECKPOINT_FILE)

    def save(self, state: dict[str, Any], metrics: dict[str, Any]) -> None:
        """Replace the checkpoint atomically and log the metrics."""
        if self.dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".ckpt.", suffix=".tmp")
        os.close(fd)
        torch.save(state, tmp)
        os.replace(tmp, self.dir / CHECKPOINT_FILE)
        self.report(metrics)

    def report(self, metrics: dict[str, Any]) -> None:
        """Append one JSON line of metrics."""
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            with open(self.dir / METRICS_FILE, "a") as f:
                f.write(json.dumps(metrics) + "\n")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by `Hooks.save`, on the CPU."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError) as e:
        raise TrainingError(f"cannot read checkpoint {path}: {e}; delete it to restart the "
                            "unit from scratch") from e
