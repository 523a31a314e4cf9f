"""The sweep's typed configuration, loaded from a workflow YAML and checked at the boundary.

Sections for the model and the trainings are passed on to the training layer's own configs; this
module owns what the sweep itself decides: data, task lists, regimes, resources, solving.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from .. import config as network_config
from .. import tasks as registry
from ..beam import BeamConfig
from ..config import EXECUTION_ONLY, NetworkConfig, TransferConfig, execution_only, read_yaml
from ..errors import ConfigError, unknown_name
from ..splits import SPLITS, check_lists, read_split_file
from .sections import build

# A setting added after runs were made: left out of run.json and unit keys while it has its
# default, so that those runs resume (no config difference) and keep their units' keys.
ADDED_LATER = {"omit_when_default": True}


def _plain(obj: Any) -> Any:
    """A config as plain data, settings added later left out while at their default."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in fields(obj)
                if not (f.metadata.get("omit_when_default") and getattr(obj, f.name) == (
                    f.default_factory() if f.default_factory is not MISSING else f.default))}
    if isinstance(obj, (list, tuple)):
        return [_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


@dataclass(frozen=True)
class RenderConfig:
    """How to render the built-in mini-Taskonomy when the data root is missing."""

    points: int = 200
    views: int = 3
    size: int = 64
    seed: int = 0
    buildings: int = 8

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, int) or v < (0 if f.name == "seed" else 1):
                raise ConfigError(f"data.render.{f.name} must be a positive integer, got {v!r}")
        if self.views < 3:
            raise ConfigError("data.render.views must be >= 3: egomotion needs triples of views")


@dataclass(frozen=True)
class DataConfig:
    """Where the dataset is and, for the embedded default, how to render it."""

    root: str = "data/mini"
    render: RenderConfig | None = None
    split_seed: int = 0
    split: tuple[float, float, float] = (0.5, 0.25, 0.25)  # train, validation, test buildings
    # Score every network on at most this many test samples (None: the whole test split).
    test_images: int | None = field(default=None, metadata=ADDED_LATER)
    # The buildings of each split ({train, val, test: names}), e.g. the release's official split
    # (the workflow's `data.split_file` is read into this, so unit keys hash the lists, not a
    # path); None: `split` fractions of the root's buildings, shuffled by `split_seed`.
    buildings: dict[str, tuple[str, ...]] | None = field(default=None, metadata=ADDED_LATER)

    def __post_init__(self) -> None:
        if "://" in self.root:
            raise ConfigError(f"data.root {self.root!r} is a URI, but a dataset is read (and "
                              "rendered) as a local folder of many small files: mount it on "
                              "every node (FSx for Lustre, EFS, mountpoint-s3, gcsfuse; "
                              "cluster.yaml's initialization_commands) and give the mount's path")
        if len(self.split) != 3 or abs(sum(self.split) - 1) > 1e-6 or min(self.split) <= 0:
            raise ConfigError(f"data.split must be three positive fractions summing to 1 "
                              f"(train, val, test), got {list(self.split)}")
        n = self.test_images
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
            raise ConfigError(f"data.test_images must be a positive integer (test samples every "
                              f"network is scored on) or null for the whole test split, got "
                              f"{self.test_images!r}")
        if self.buildings is not None:
            check_lists(self.buildings, "data.buildings")
            object.__setattr__(self, "buildings",
                               {s: tuple(sorted(self.buildings[s])) for s in SPLITS})


@dataclass(frozen=True)
class Resources:
    """Ray resources per unit kind; fractions of a GPU are allowed for transfers.

    Only the gold networks' trainer and worker count can change results (data-parallel batch
    norm sees per-worker batches); every other setting may change when a run resumes.
    """

    gold_trainer: str = "ray_train"  # ray_train (TorchTrainer runs) or task (plain Ray tasks)
    gold_workers: int = 1
    gold_cpus_per_worker: float = field(default=1.0, metadata=EXECUTION_ONLY)
    gold_gpus_per_worker: float = field(default=0.0, metadata=EXECUTION_ONLY)
    # Per scratch, features and transfer unit:
    cpus_per_unit: float = field(default=1.0, metadata=EXECUTION_ONLY)
    gpus_per_unit: float = field(default=0.0, metadata=EXECUTION_ONLY)
    # Transient failures (not deterministic ones) are retried this often.
    retries: int = field(default=2, metadata=EXECUTION_ONLY)
    # Attempts cut short by a lost node (spot preemption) run again this often, not spending
    # `retries`.
    node_losses: int = field(default=8, metadata={**EXECUTION_ONLY, **ADDED_LATER})
    max_calls: int = field(default=0, metadata=EXECUTION_ONLY)  # GPU worker reuse (0: unlimited)
    # Units queued in Ray beyond capacity (autoscaling clusters: > 0).
    queue_slack: int = field(default=0, metadata=EXECUTION_ONLY)
    # Host memory (GB) Ray reserves for each transfer unit, so that a node runs no more of them
    # than its memory holds (0: none reserved). `resources.transfer_memory` estimates a unit's need.
    transfer_memory_gb: float = field(default=0.0, metadata={**EXECUTION_ONLY, **ADDED_LATER})

    def __post_init__(self) -> None:
        if self.gold_trainer not in ("ray_train", "task"):
            raise ConfigError("resources.gold_trainer must be 'ray_train' or 'task'")
        if min(self.gold_workers - 1, self.retries, self.node_losses, self.max_calls,
               self.queue_slack) < 0:
            raise ConfigError("resources: gold_workers >= 1; retries, node_losses, max_calls and "
                              "queue_slack >= 0")
        if min(self.gold_cpus_per_worker, self.cpus_per_unit) <= 0:
            raise ConfigError("resources: CPUs per worker/unit must be positive")
        if min(self.gold_gpus_per_worker, self.gpus_per_unit) < 0:
            raise ConfigError("resources: GPUs must be >= 0 (fractions are fine)")
        if self.transfer_memory_gb < 0:
            raise ConfigError("resources.transfer_memory_gb must be >= 0 (0: none reserved)")


@dataclass(frozen=True)
class SolveConfig:
    """The default taxonomy solved at the end of a sweep (as `solve --budget`, with its options)."""

    budget: float = 4  # tasks supervised; with `costs`, their summed cost
    max_order: int = 3
    # The paper's supervision cost r_i per task (others 1): the budget limits the summed cost.
    costs: dict[str, float] = field(default_factory=dict, metadata=ADDED_LATER)
    # Per target, the weight of its term in the objective (others 1).
    importance: dict[str, float] = field(default_factory=dict, metadata=ADDED_LATER)

    def __post_init__(self) -> None:
        if not self.budget > 0 or not 1 <= self.max_order <= 4:
            raise ConfigError("solve.budget must be > 0 and solve.max_order in 1..4")
        for what, values in (("costs", self.costs), ("importance", self.importance)):
            for name, value in values.items():
                if value < 0:
                    raise ConfigError(f"solve.{what}: {name} is {value:g}; it must be >= 0")

    def weighing(self) -> dict[str, dict[str, float]]:
        """The costs and importance asked for, less those equal to the default 1."""
        return {k: {n: v for n, v in getattr(self, k).items() if v != 1}
                for k in ("costs", "importance")}

    def check_tasks(self, trained: tuple[str, ...], targets: tuple[str, ...]) -> None:
        """Costs name supervisable tasks, importance names targets, the budget buys a task."""
        for name in self.costs:
            if name not in trained:
                raise unknown_name("task in solve.costs", name, trained,
                                   "A cost counts for a task the sweep trains (in `tasks`; "
                                   "`random` is never supervised).")
        for name in self.importance:
            if name not in targets:
                raise unknown_name("target in solve.importance", name, targets,
                                   "Importance weighs a transfer target (in `targets`).")
        cheapest = min(self.costs.get(n, 1.0) for n in trained)
        if self.budget < cheapest - 1e-9:
            raise ConfigError(f"solve.budget {self.budget:g} cannot supervise any task: the "
                              f"cheapest costs {cheapest:g} (solve.costs); raise the budget")


@dataclass(frozen=True)
class SweepConfig:
    """A whole sweep: which tasks, how to train them, on what resources."""

    name: str
    data: DataConfig = field(default_factory=DataConfig)
    tasks: tuple[str, ...] = ()  # trained task networks (sources); () = the full dictionary
    targets: tuple[str, ...] = ()  # transfer targets; () = every non-source-only task above
    regimes: tuple[int, ...] = (128, 512)
    max_order: int = 4
    beam: tuple[int, int, int] = (5, 5, 6)  # top-k first-order sources for orders 2, 3, 4
    seed: int = 0
    network: dict[str, Any] = field(default_factory=dict)  # gold networks: preset + overrides
    scratch: dict[str, Any] = field(default_factory=dict)  # overrides of `network` for scratch
    transfer: dict[str, Any] = field(default_factory=dict)  # transfer training settings
    resources: Resources = field(default_factory=Resources)
    solve: SolveConfig = field(default_factory=SolveConfig)

    def __post_init__(self) -> None:
        trained = registry.resolve(list(self.tasks) or None)
        if "random" in trained:
            trained.remove("random")  # never trained; always available as a source
        object.__setattr__(self, "tasks", tuple(trained))
        targets = registry.resolve(list(self.targets) or None, targets_only=True)
        if not self.targets:
            targets = [t for t in targets if t in trained]
        missing = [t for t in targets if t not in trained]
        if missing:
            raise ConfigError(f"targets {missing} are not in `tasks`: a target needs its gold "
                              "network; add them to `tasks`")
        if not targets:
            only = ", ".join(sorted(registry.SOURCE_ONLY))
            raise ConfigError(f"no task in `tasks` ({', '.join(trained)}) can be a target: "
                              f"{only} are source-only; add a task to transfer to, e.g. normal")
        object.__setattr__(self, "targets", tuple(targets))
        if not self.regimes or min(self.regimes) < 1 or len(set(self.regimes)) != len(self.regimes):
            raise ConfigError(f"regimes must be distinct positive image counts, got {self.regimes}")
        if not 1 <= self.max_order <= 4:
            raise ConfigError(f"max_order must be in 1..4, got {self.max_order}")
        if len(self.beam) != 3 or min(self.beam) < 2:
            raise ConfigError("beam must be [k2, k3, k4]: the top-k sources combined per order")
        self.solve.check_tasks(self.tasks, self.targets)
        gold = self.gold_network()  # validate the sections now, not on a worker hours later
        self.scratch_network()
        self.transfer_config()
        workers = self.resources.gold_workers
        if workers > 1 and self.resources.gold_trainer != "ray_train":
            raise ConfigError(f"resources.gold_workers is {workers}: data-parallel gold training "
                              "runs on Ray Train; set resources.gold_trainer: ray_train")
        gpus = self.resources.gold_gpus_per_worker
        if gpus > 1 or (workers > 1 and gpus not in (0, 1)):
            raise ConfigError(f"resources.gold_gpus_per_worker is {gpus}: a gold worker trains on "
                              "one GPU (more would sit idle) and data-parallel workers need one "
                              "each (NCCL refuses two ranks on one GPU); use 0 or 1, fractions "
                              "only with gold_workers: 1, and gold_workers for more GPUs")
        if gold.train.batch_size % workers:
            raise ConfigError(f"network.train.batch_size {gold.train.batch_size} (the global "
                              f"batch) does not split among resources.gold_workers {workers}; "
                              "make it a multiple of the worker count")

    def check_beam(self) -> None:
        """Refuse a beam that cannot choose, now, not in the beam units after first order.

        Called on loading a workflow to run, not on reading a stored run's config: one of an
        older version that did not check is still read (its report, its status).
        """
        try:
            self.beam_config()
        except ConfigError as e:
            raise ConfigError(f"beam {list(self.beam)}: {e}") from e
        ranked = len(self.tasks) - 1  # a target's sources besides itself and `random`
        if self.targets and 1 < self.max_order > ranked:
            raise ConfigError(f"max_order {self.max_order} combines {self.max_order} sources "
                              f"besides the target and `random`, and `tasks` leaves {ranked}; "
                              f"set max_order to at most {max(ranked, 1)} or add tasks")

    def beam_config(self) -> BeamConfig:
        """The beam search's settings: the widths of orders 2..max_order and max_order."""
        return BeamConfig(widths=self.beam[:self.max_order - 1], max_order=self.max_order)

    def gold_network(self) -> NetworkConfig:
        """The gold networks' model and training settings (preset `mini` unless named)."""
        return network_config.from_dict(self.network)

    def scratch_network(self) -> NetworkConfig:
        """The scratch networks' settings: `network` with the `scratch` overrides on top."""
        return network_config.from_dict(self.scratch, base=self.gold_network())

    def transfer_config(self) -> TransferConfig:
        """The transfer trainings' settings (`transfer` section; its seed is the sweep's)."""
        try:
            return TransferConfig.from_dict({"seed": self.seed, **self.transfer})
        except TypeError as e:
            raise ConfigError(f"transfer: {e}") from e

    @property
    def sources(self) -> tuple[str, ...]:
        """Every transfer source: the trained tasks plus the random encoder."""
        return (*self.tasks, "random")

    def to_json(self) -> dict[str, Any]:
        """The resolved config as plain JSON (what run.json records)."""
        return json.loads(json.dumps(_plain(self)))

    def digest(self, *parts: str, gold: bool = False) -> str:
        """A short deterministic hash of named config parts (for unit keys).

        Execution-only settings are left out: changing them recomputes nothing. `gold`: the
        key of a gold network or of what is computed from one, which also depends on how many
        data-parallel replicas split each batch (and so batch norm's statistics); the default,
        one, hashes nothing, so the keys of runs made before it was hashed stand.
        """
        js = self.to_json()
        sub: dict[str, Any] = {p: _without(js[p], p) for p in parts}
        sub["method"] = registry.METHOD_VERSION  # another method version's results: never done
        if gold and self.resources.gold_workers != 1:
            sub["gold_workers"] = self.resources.gold_workers
        return hashlib.sha256(json.dumps(sub, sort_keys=True).encode()).hexdigest()[:10]


# Dotted names of the settings that change how units run, not what they compute.
EXECUTION_ONLY_SETTINGS = frozenset(
    [f"transfer.{n}" for n in execution_only(TransferConfig)]
    + [f"resources.{n}" for n in execution_only(Resources)])


def _without(value: Any, prefix: str) -> Any:
    """`value` (a config part as JSON) without its execution-only settings."""
    if not isinstance(value, dict):
        return value
    return {k: _without(v, f"{prefix}.{k}") for k, v in value.items()
            if f"{prefix}.{k}" not in EXECUTION_ONLY_SETTINGS}


def from_dict(raw: dict[str, Any]) -> SweepConfig:
    """A SweepConfig from a parsed YAML mapping (nested sections typed and checked)."""
    raw = dict(raw)
    if "name" not in raw:
        raise ConfigError("the workflow needs a `name`")
    for key, unset in (("tasks", "the full dictionary"), ("targets", "every task trained")):
        names = raw.get(key)
        if isinstance(names, list) and not names:  # (an absent key is the default)
            raise ConfigError(f"{key} is an empty list: name tasks, e.g. [normal, reshading], "
                              f"or leave `{key}` out for {unset}")
        twice = sorted({n for n in names if names.count(n) > 1}) \
            if isinstance(names, list) and all(isinstance(n, str) for n in names) else []
        if twice:
            raise ConfigError(f"{key} lists {twice[0]!r} more than once")
    data = dict(raw.get("data") or {})
    if "split_file" in data:  # read now: units see the lists, wherever they run
        if data.get("buildings") is not None:
            raise ConfigError("give data.split_file or data.buildings, not both")
        data["buildings"] = read_split_file(data.pop("split_file"))
    if data.get("render") is not None:
        data["render"] = build(RenderConfig, data["render"], "data.render")
    raw["data"] = build(DataConfig, data, "data")
    raw["resources"] = build(Resources, raw.get("resources") or {}, "resources")
    raw["solve"] = build(SolveConfig, raw.get("solve") or {}, "solve")
    return build(SweepConfig, raw, "the workflow")


def default_storage(cfg: SweepConfig) -> str:
    """`runs/<name>`, the storage of a sweep run without --storage; the name must be a folder's."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._ +()-]*", cfg.name) or ".." in cfg.name:
        raise ConfigError(f"name {cfg.name!r} would put the default storage runs/<name> "
                          "elsewhere: give --storage, or a name without path separators or '..'")
    return f"runs/{cfg.name}"


def load(path: str | Path, *, data_root: str | None = None) -> SweepConfig:
    """Load a workflow YAML; `data_root` (the --data option) overrides `data.root`."""
    path = Path(path)
    try:
        raw = read_yaml(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"workflow file {path} not found; see workflows/ for examples") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"workflow file {path} is not UTF-8 text ({e.reason} at byte "
                          f"{e.start}): give a workflow YAML, e.g. workflows/mini.yaml") from None
    except OSError as e:  # a folder, no permission
        raise ConfigError(f"cannot read workflow file {path}: {e.strerror or e}; give a "
                          "workflow YAML file, e.g. workflows/mini.yaml") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"workflow file {path} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"workflow file {path} must hold a mapping")
    if data_root is not None:
        raw.setdefault("data", {})
        raw["data"] = {**(raw["data"] or {}), "root": data_root}
    cfg = from_dict(raw)
    cfg.check_beam()
    return cfg


def diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "", *,
         skip: frozenset[str] = frozenset()) -> list[str]:
    """Human-readable differences between two JSON configs (`a.b: 1 -> 2`), but for `skip`."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        if f"{prefix}{k}" in skip:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += diff(a, b, f"{prefix}{k}.", skip=skip)
        elif a != b:
            out.append(f"{prefix}{k}: {json.dumps(a)} -> {json.dumps(b)}")
    return out
