"""Typed configs of steps 1-2: the model family, the training loop, presets, YAML, transfers.

`paper` is Taskonomy's network (256 px, ResNet-50 trunk, 16x16x8 representation); `mini` keeps the
same topology, narrow and at 64 px, so that all 26 gold networks train on a 2-core machine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError, unknown_name

OPTIMISERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine")
DEVICES = ("auto", "cpu", "cuda")
AMP_MODES = ("auto", "on", "off")
# A setting of how a unit runs, not of what it computes (results do not depend on it): left out
# of unit keys, and changed on resume without --force-config.
EXECUTION_ONLY = {"execution_only": True}


def execution_only(cls: type) -> frozenset[str]:
    """The settings of config class `cls` that change how a unit runs, not what it computes."""
    return frozenset(f.name for f in fields(cls) if f.metadata.get("execution_only"))


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise ConfigError(what)


@dataclass(frozen=True)
class ModelConfig:
    """The encoder family (ResNet v1 bottleneck stages) and the decoders' sizes."""

    image_size: int = 256  # input side, pixels
    width: int = 64  # channels of the stem and of the first stage's bottleneck (ResNet-50: 64)
    blocks: tuple[int, ...] = (3, 4, 6, 3)  # bottleneck units per stage (ResNet-50)
    rep_channels: int = 8  # the representation's channels (Taskonomy: 16x16x8)
    decoder_width: int = 256  # channels of the dense decoder at representation resolution
    head_width: int = 1024  # hidden units of the vector / class / multi-view heads
    jigsaw_classes: int = 1000  # permutations in the jigsaw set (Noroozi and Favaro: 1000)
    embedding_dim: int = 64  # segment_unsup pixel embedding size

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", tuple(int(b) for b in self.blocks))
        _check(len(self.blocks) == 4 and all(b >= 1 for b in self.blocks),
               f"model.blocks must be 4 positive unit counts (ResNet-50: [3, 4, 6, 3]), "
               f"got {list(self.blocks)}")
        _check(self.image_size >= 32 and self.image_size % 16 == 0,
               f"model.image_size must be a multiple of 16, at least 32 (the encoder's output "
               f"stride is 16), got {self.image_size}")
        for name in ("width", "rep_channels", "decoder_width", "head_width", "embedding_dim"):
            _check(getattr(self, name) >= 1, f"model.{name} must be >= 1")
        _check(2 <= self.jigsaw_classes <= 5000, "model.jigsaw_classes must be in 2..5000")

    @property
    def rep_size(self) -> int:
        """Side of the representation: input / 16."""
        return self.image_size // 16


@dataclass(frozen=True)
class TrainConfig:
    """One training loop's settings (gold, scratch or random-decoder networks)."""

    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-4  # Taskonomy's task configs: Adam at 1e-4, weight decay 2e-6, batch 32
    optimiser: str = "adam"
    schedule: str = "constant"  # learning rate over the run: constant, or cosine decay to 0
    warmup: int = 0  # steps of linear warm-up before the schedule
    weight_decay: float = 2e-6
    seed: int = 0
    amp: str = "auto"  # mixed precision: auto = on for CUDA (bf16), off on CPU
    channels_last: bool = True
    num_workers: int = 0  # data-loader worker processes (0: load in the training process)
    device: str = "auto"
    eval_batch_size: int = 64
    checkpoint_every: int = 0  # steps between checkpoints; 0: only at the end
    log_every: int = 10  # steps between hooks.report calls
    grad_clip: float = 5.0  # max gradient norm; 0 disables

    def __post_init__(self) -> None:
        _check(self.steps >= 1, "train.steps must be >= 1")
        _check(self.batch_size >= 1 and self.eval_batch_size >= 1, "batch sizes must be >= 1")
        _check(self.lr > 0, f"train.lr must be positive, got {self.lr}")
        _check(self.weight_decay >= 0, "train.weight_decay must be >= 0")
        _check(self.num_workers >= 0, "train.num_workers must be >= 0")
        _check(self.checkpoint_every >= 0 and self.log_every >= 1,
               "train.checkpoint_every must be >= 0 and train.log_every >= 1")
        _check(self.grad_clip >= 0, "train.grad_clip must be >= 0")
        if self.optimiser not in OPTIMISERS:
            raise unknown_name("optimiser", self.optimiser, OPTIMISERS)
        _check(self.warmup >= 0, "train.warmup must be >= 0")
        if self.schedule not in SCHEDULES:
            raise unknown_name("schedule", self.schedule, SCHEDULES)
        if self.device not in DEVICES:
            raise unknown_name("device", self.device, DEVICES)
        if self.amp not in AMP_MODES:
            raise unknown_name("amp mode", self.amp, AMP_MODES)


@dataclass(frozen=True)
class NetworkConfig:
    """Model plus training settings of the task networks: what a gold or scratch unit needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (YAML/JSON-ready); `from_dict` reads it back."""
        d = dataclasses.asdict(self)
        d["model"]["blocks"] = list(self.model.blocks)
        return d


@dataclass(frozen=True)
class TransferConfig:
    """Training of one transfer readout (the same for every head of a fused group)."""

    steps: int = 200
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4  # L2 on every weight, as Taskonomy's transfer networks (1e-4)
    clip_sigma: float = 5.0  # inputs clipped to mean +/- clip_sigma std per channel
    bn_momentum: float = 0.1  # PyTorch convention (Taskonomy's decay 0.9 = momentum 0.1)
    seed: int = 0
    # Test samples scored per batch, by every head of a chunk at once.
    eval_batch_size: int = field(default=256, metadata=EXECUTION_ONLY)
    # Heads fused into one batched module at most: a unit trains its transfers in chunks of this
    # many (each head equals itself trained alone, so chunking does not change results).
    max_heads: int = field(default=32, metadata=EXECUTION_ONLY)
    device: str = "auto"  # auto (CUDA when present), cpu or cuda
    fused_backend: str = "auto"  # grouped (grouped convolutions), vmap, or auto (grouped if it can)
    # How representations are cached: float32 by default, since float16 moved mean test losses
    # by 0.5-2.9%, 1.6-2.6x the float32 rounding floor, in benchmarks/bench_transfers.py
    # (docs/benchmarks.md); float16 halves storage.
    feature_dtype: str = "float32"
    # Mixed precision (bf16 autocast) for the readout and decoder: off by default, since in
    # benchmarks/bench_transfers.py bf16 moved mean test losses by 0.4-6.4% and pairwise win
    # rates (the AHP input) by up to 0.42, 1.5-6x the float32 rounding floor; `on` made dense heads
    # 1.3-1.5x faster on a CPU with native bf16 (AVX512-BF16) and 5x slower on one without
    # (AVX2: emulated), `auto` = on for CUDA only. The grouped backend honours it; torch.func's
    # vmap runs float32 on the CPU whatever is asked.
    amp: str = "off"
    # A unit holds the regime's training labels in memory when they fit in this many GiB (each
    # step's batch serves every head); above it (paper scale: 16k dense labels at 256 px are
    # 12.6 GB) each step reads its batch from the data set. Test labels are always read batch by
    # batch. Results do not depend on it.
    label_memory_gb: float = field(default=4.0, metadata=EXECUTION_ONLY)
    # Loader processes that read streamed labels ahead of the training (0: read in the unit's
    # own process); on a GPU node decoding a batch's PNGs can take longer than its step.
    num_workers: int = field(default=0, metadata=EXECUTION_ONLY)
    # Device memory (GB) a unit's heads may use: each chunk then has as many heads, and each test
    # batch as many samples, as fit (`memory.fit`; at most max_heads and eval_batch_size). 0: no
    # bound. At paper scale a dense first-order chunk of 26 heads saves ~17 GB of activations
    # per training step and needs ~56 GB to score a test batch of 256.
    device_memory_gb: float = field(default=0.0, metadata=EXECUTION_ONLY)
    # Host memory (GB) for the cached representations a chunk of heads reads (its sources'
    # training and test sets): chunks hold fewer sources where needed. 0: no bound.
    feature_memory_gb: float = field(default=0.0, metadata=EXECUTION_ONLY)

    def __post_init__(self) -> None:
        checks = [(self.steps >= 1, "transfer.steps must be >= 1"),
                  (self.batch_size >= 2, "transfer.batch_size must be >= 2 (batch norm)"),
                  (self.eval_batch_size >= 1, "transfer.eval_batch_size must be >= 1"),
                  (self.max_heads >= 1, "transfer.max_heads must be >= 1"),
                  (self.device in DEVICES, "transfer.device: auto, cpu or cuda"),
                  (self.fused_backend in ("auto", "grouped", "vmap"),
                   "transfer.fused_backend must be auto, grouped or vmap"),
                  (self.lr > 0, "transfer.lr must be positive"),
                  (self.weight_decay >= 0, "transfer.weight_decay must be >= 0"),
                  (self.clip_sigma > 0, "transfer.clip_sigma must be positive"),
                  (0 < self.bn_momentum <= 1, "transfer.bn_momentum must be in (0, 1]"),
                  (self.feature_dtype in ("float16", "float32"),
                   "transfer.feature_dtype must be float16 or float32"),
                  (self.amp in AMP_MODES, "transfer.amp must be auto, on or off"),
                  (self.label_memory_gb >= 0, "transfer.label_memory_gb must be >= 0 (0: read "
                   "every training batch from the data set)"),
                  (self.num_workers >= 0, "transfer.num_workers must be >= 0"),
                  (self.device_memory_gb >= 0, "transfer.device_memory_gb must be >= 0 (0: no "
                   "bound)"),
                  (self.feature_memory_gb >= 0, "transfer.feature_memory_gb must be >= 0 (0: no "
                   "bound)")]
        for ok, what in checks:
            if not ok:
                raise ConfigError(what)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> TransferConfig:
        """Build from the workflow's `transfer:` section; unknown keys are errors."""
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        for k in d:
            if k not in known:
                raise unknown_name("transfer setting", k, sorted(known))
        defaults = cls()
        return cls(**{k: _coerce(v, getattr(defaults, k), f"transfer.{k}") for k, v in d.items()})


PRESETS: dict[str, NetworkConfig] = {
    # Taskonomy's task networks: ResNet-50 trunk at 256 px, Adam 1e-4, weight decay 2e-6, batch
    # 32, FC heads of 1024 (its released configs, which also divide the rate by 10 after 80k
    # steps; the step count here is our choice for a GPU budget).
    "paper": NetworkConfig(ModelConfig(), TrainConfig(steps=30000, batch_size=32)),
    # Same topology, 8x narrower at 64 px (representation 4x4x8): minutes on two CPU cores.
    "mini": NetworkConfig(
        ModelConfig(image_size=64, width=8, decoder_width=32, head_width=128,
                    jigsaw_classes=24, embedding_dim=8),
        TrainConfig(steps=120, batch_size=16, lr=2e-3, weight_decay=1e-5, channels_last=False,
                    schedule="cosine", warmup=10,
                    eval_batch_size=64),
    ),
}


def preset(name: str) -> NetworkConfig:
    """A named preset (`paper` or `mini`)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise unknown_name("preset", name, PRESETS) from None


def _override(obj: Any, changes: dict[str, Any], where: str) -> Any:
    if not isinstance(changes, dict):
        raise ConfigError(f"{where} must be a mapping of settings, got {changes!r}")
    known = {f.name: f for f in fields(obj)}
    updates: dict[str, Any] = {}
    for key, value in changes.items():
        if key not in known:
            raise unknown_name(f"{where} setting", key, known)
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            updates[key] = _override(current, value, f"{where}.{key}")
        else:
            updates[key] = _coerce(value, current, f"{where}.{key}")
    try:
        return dataclasses.replace(obj, **updates)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from e


def _coerce(value: Any, current: Any, where: str) -> Any:
    """Check a YAML value against the default's type (ints may stand for floats)."""
    if isinstance(current, bool):
        ok = isinstance(value, bool)
    elif isinstance(current, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(current, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(current, tuple):
        ok = isinstance(value, (list, tuple))
        value = tuple(value) if ok else value
    else:
        ok = isinstance(value, type(current))
    if not ok:
        raise ConfigError(f"{where} should be a {type(current).__name__}, got {value!r}")
    return value


def from_dict(d: dict[str, Any] | None, base: str | NetworkConfig = "mini") -> NetworkConfig:
    """A config from overrides on a preset: `{preset: paper, model: {...}, train: {...}}`.

    Unknown keys are errors with did-you-mean, so a typo never silently keeps a default.
    """
    d = dict(d or {})
    name = d.pop("preset", None)
    cfg = preset(name) if name is not None else (preset(base) if isinstance(base, str) else base)
    return _override(cfg, d, "network")


def read_yaml(text: str) -> Any:
    """Parse YAML with YAML 1.2's booleans and floats: `amp: on` stays "on", `1e-4` is a float.

    (Other scalars as PyYAML reads them: `0123` is still octal, `08` a string.)

    PyYAML follows YAML 1.1, which also reads on/off/yes/no as booleans (the documented
    `train.amp: on` arrived as True and was refused as not a mode) and reads `1e-4`, a float
    without a dot, as a string.
    """
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    bool_tag, float_tag = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:float"
    Loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in (bool_tag, float_tag)]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver(bool_tag, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                 list("tTfF"))
    # A dot or an exponent makes a float ("12" stays an int, "0801" a string as before).
    Loader.add_implicit_resolver(float_tag, re.compile(
        r"^(?:[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|[-+]?[0-9]+[eE][-+]?[0-9]+"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"), list("-+0123456789."))
    return yaml.load(text, Loader=Loader)  # noqa: S506 (a SafeLoader, other scalars)


def load_yaml(path: str | Path, base: str | NetworkConfig = "mini") -> NetworkConfig:
    """Read a YAML file of overrides (see `from_dict`)."""
    import yaml

    try:
        data = read_yaml(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config {path}: {e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e
    return from_dict(data, base)
