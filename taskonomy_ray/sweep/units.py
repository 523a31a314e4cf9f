"""What each unit of the plan does, as calls into the plain library functions.

`execute(unit, ctx)` runs on a Ray worker; everything it writes goes through `tables.Storage`
atomically, the outputs last, so a unit is either done (its outputs exist) or will be redone.
"""

from __future__ import annotations

import io
import os
import sys
from dataclasses import replace
from typing import Any

from ..errors import DataError, StorageError, TrainingError
from ..splits import SplitConfig
from ..tables import LOSSES_SCHEMA, Storage
from . import config as sweep_config
from . import plan as planning
from .partial import read_partial, record_partial, trainable_sets
from .superseded import set_aside_superseded

# A checkpoint that training may resume from, kept in storage next to the final weights.
RESUME_FILE = "checkpoint.pt"


def splits(cfg: sweep_config.SweepConfig) -> SplitConfig:
    """The dataset's building split from the workflow's data section."""
    train, val, test = cfg.data.split
    return SplitConfig(train=train, val=val, test=test, seed=cfg.data.split_seed,
                       test_images=cfg.data.test_images, buildings=cfg.data.buildings)


class StorageHooks:
    """Training hooks that keep the resumable checkpoint in storage (any pyarrow filesystem)."""

    def __init__(self, storage: Storage, rel: str) -> None:
        self.storage, self.rel = storage, rel
        self.last: dict[str, Any] | None = None

    def load(self) -> dict[str, Any] | None:
        """The last checkpoint saved by an earlier attempt of this unit, if any."""
        if not self.storage.exists(self.rel):
            return None
        data = self.storage.read_bytes(self.rel)  # a read error is raised, not taken as damage
        try:
            self.last = torch_state(data, self.storage.path(self.rel))
        except StorageError as e:  # a damaged resume point: keep it aside, train from the start
            dest = self.storage.set_aside(self.rel)
            print(f"taskonomy-ray: {e}; moved to {dest}, training from step 0", file=sys.stderr)
            return None
        return self.last

    def save(self, state: dict[str, Any], metrics: dict[str, Any]) -> None:
        """Replace the checkpoint atomically."""
        self.storage.write_bytes(self.rel, torch_bytes(state))
        self.last = state

    def report(self, metrics: dict[str, Any]) -> None:
        """Metrics are not kept beyond the ledger's timing."""


def torch_state(data: bytes, where: str = "checkpoint") -> Any:
    """`torch.load` from bytes, on the CPU (our own checkpoints: full pickles).

    A damaged file is a StorageError naming `where` and the fix, not torch's reader error (which
    names no file, and which the runner would retry as if it were a crash).
    """
    import pickle

    import torch

    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise StorageError(f"damaged checkpoint {where} ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}); delete it and resume: "
                           "the unit that wrote it runs again") from e


def torch_bytes(obj: Any) -> bytes:
    """`torch.save` into bytes."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _context(ctx: dict[str, Any]) -> tuple[sweep_config.SweepConfig, Storage]:
    return sweep_config.from_dict(ctx["config"]), Storage(ctx["storage"])


def run_gold(unit: planning.Unit, ctx: dict[str, Any]) -> dict[str, Any]:
    """Stage 1: the gold network of a task (here, or as a Ray Train run)."""
    cfg, storage = _context(ctx)
    if cfg.resources.gold_trainer == "ray_train":
        from .train_runner import fit_gold

        return fit_gold(unit, ctx)
    hooks = StorageHooks(storage, f"checkpoints/{unit.key}/{RESUME_FILE}")
    return finish_gold(unit, ctx, hooks)


def finish_gold(unit: planning.Unit, ctx: dict[str, Any], hooks: Any) -> dict[str, Any]:
    """Train (or resume) a gold network with `hooks`, then write its weights and losses."""
    from ..training import replica, train_gold

    cfg, storage = _context(ctx)
    result = train_gold(unit.params["task"], ctx["data_root"], cfg.gold_network(), hooks=hooks,
                        splits=splits(cfg), unit=unit.key)
    rep = replica()
    info = {"steps": result.steps, "train_images": result.train_images,
            "final_loss": result.history[-1] if result.history else None,
            "replicas": rep.world}
    if rep.rank != 0:  # a data-parallel replica: rank 0 writes the unit's outputs
        return info
    final = hooks.last if hooks.last is not None else hooks.load()
    storage.write_bytes(planning.checkpoint_path(unit.key), torch_bytes(final))
    storage.write_losses(unit.key, result.losses)
    return info


def run_scratch(unit: planning.Unit, ctx: dict[str, Any]) -> dict[str, Any]:
    """Stage 1b: the scratch network of (target, regime), trained from pixels."""
    from ..training import train_scratch

    cfg, storage = _context(ctx)
    hooks = StorageHooks(storage, f"checkpoints/{unit.key}/{RESUME_FILE}")
    result = train_scratch(unit.params["target"], unit.params["regime"], ctx["data_root"],
                           cfg.scratch_network(), hooks=hooks, splits=splits(cfg),
                           subset_seed=cfg.seed, unit=unit.key)
    storage.write_losses(unit.key, result.losses)
    return {"steps": result.steps, "train_images": result.train_images}


def _feature_cache(cfg: sweep_config.SweepConfig, storage: Storage) -> Any:
    """The run's representation cache, its entries named by the plan's feature unit keys."""
    from ..features import FeatureCache

    def path_of(source: str, imageset: str) -> str:
        return planning.features_path(planning.features_key(cfg, source, imageset))

    return FeatureCache(storage, path_of, dtype=cfg.transfer_config().feature_dtype)




def load_source_encoder(cfg: sweep_config.SweepConfig, storage: Storage, source: str) -> Any:
    """A source's frozen encoder: its gold network's, or the fixed-seed random one."""
    from ..models.encoder import random_encoder
    from ..training import load_encoder

    if source == "random":
        return random_encoder(cfg.gold_network().model, cfg.seed).eval()
    rel = planning.checkpoint_path(planning.gold_key(cfg, source))
    return load_encoder(torch_state(storage.read_bytes(rel), storage.path(rel)))


def run_features(unit: planning.Unit, ctx: dict[str, Any]) -> dict[str, Any]:
    """Stage 2a: one source encodes one image set, once; every transfer reads the cache.

    Encodes on the transfers' device (`transfer.device`: CUDA when present), so a GPU worker's
    feature units do not run the frozen encoders on its CPU; a set too large to keep decoded is
    read ahead by `transfer.num_workers` loader processes. A unit runs only when its entry is
    not there or was made by another version of its encoder (`Scheduler.changed_inputs`), so a
    cached entry is encoded again, not taken.
    """
    from ..transfer import resolve_device

    cfg, storage = _context(ctx)
    source, imageset = unit.params["source"], unit.params["imageset"]
    tcfg = cfg.transfer_config()
    samples = _decoded(ctx["data_root"], imageset, cfg)
    workers = 0 if isinstance(samples, _Decoded) else tcfg.num_workers  # streamed: read ahead
    _feature_cache(cfg, storage).ensure(
        source, imageset, lambda: load_source_encoder(cfg, storage, source), samples,
        images=samples.images, lazy=True, device=resolve_device(tcfg), num_workers=workers,
        refresh=True)
    return {"images": len(samples)}


# Decoded images of the last two image sets in this worker process: the plan orders feature
# units image set first, so the next sources' units on this worker skip decoding. Only sets of at
# most DECODED_SET_BYTES are kept (mini: 30 MB); larger ones (paper scale: 16k images at 256 px
# are 12.6 GB) are decoded as they are encoded, so a worker's memory stays bounded.
DECODED_SET_BYTES = 1024**3


class _Decoded(list):  # type: ignore[type-arg]
    """Decoded samples (`image`, `rgb`) of one image set, with their ids like a dataset's."""

    images: list[str]


_DECODED: dict[tuple[Any, ...], _Decoded] = {}


def _decoded_bytes(imageset: str, samples: int, image_size: int) -> int:
    """Bytes of an image set's decoded float32 RGB (every view of multi-view samples)."""
    from ..features import parse_imageset
    from ..tasks import get_task

    _, multi = parse_imageset(imageset)
    views = get_task(multi).views if multi else 1
    return samples * views * 3 * image_size * image_size * 4


def _decoded(root: str, imageset: str, cfg: sweep_config.SweepConfig) -> Any:
    """The samples of an image set: kept decoded in this worker when small, else streamed."""
    from ..features import open_imageset

    size = cfg.gold_network().model.image_size
    key = (root, imageset, size, splits(cfg), cfg.seed)
    if key in _DECODED:
        return _DECODED[key]
    data = open_imageset(root, imageset, image_size=size, splits=splits(cfg),
                         subset_seed=cfg.seed)
    if _decoded_bytes(imageset, len(data), size) > DECODED_SET_BYTES:
        return data  # each sample is read when the encoder reaches it
    while len(_DECODED) >= 2:
        _DECODED.pop(next(iter(_DECODED)))
    kept = _DECODED[key] = _Decoded({"image": s["image"], "rgb": s["rgb"]}
                                    for s in (data[i] for i in range(len(data))))
    kept.images = data.images
    return kept


def run_transfer(unit: planning.Unit, ctx: dict[str, Any]) -> dict[str, Any]:
    """Stage 2b-c: a fused group of transfers into one target; per-image losses written.

    Transfers from sources whose representations failed are left out (`trainable_sets`); a
    later run that has them trains the group again, whole.
    """
    import torch

    from ..fused import train_transfer_group

    cfg, storage = _context(ctx)
    torch.manual_seed(cfg.seed)
    kept, record = trainable_sets(unit, cfg, storage)
    diverged: dict[tuple[str, ...], str] = {}
    table = train_transfer_group(unit.params["target"], kept, unit.params["regime"],
                                 _feature_cache(cfg, storage), ctx["data_root"],
                                 cfg.transfer_config(), cfg.gold_network().model, unit=unit.key,
                                 splits=splits(cfg), subset_seed=cfg.seed, diverged=diverged)
    if diverged:  # left out for good (the same seed diverges again), never waited for
        record = record or {"without": [], "left_out": [], "sources": []}
        record["left_out"] = [*record["left_out"], *(list(ss) for ss in diverged)]
        record["diverged"] = [{"sources": list(ss), "why": why} for ss, why in diverged.items()]
        record_partial(storage, unit, record)  # first: a crash next keeps no table that
        # looks more complete than it is (an older table only has more than this says)
    storage.write_losses(unit.key, table)
    record_partial(storage, unit, record)
    info: dict[str, Any] = {"transfers": len(kept) - len(diverged), "rows": table.num_rows}
    return {**info, "left_out": record["left_out"]} if record else info


def run_beam(unit: planning.Unit, ctx: dict[str, Any]) -> dict[str, Any]:
    """Stage 2d: rank the target's first-order sources (AHP) and choose its higher orders."""
    import pyarrow as pa

    from .. import affinity, beam

    cfg, storage = _context(ctx)
    target, regime = unit.params["target"], unit.params["regime"]
    losses = pa.concat_tables([storage.read_table(planning.losses_path(d), LOSSES_SCHEMA)
                               for d in unit.deps])
    table = affinity.compute_affinities(losses, need_scratch=False)  # ranks by affinity alone
    ranked = beam.rank_sources(table, target, regime)
    combos, skipped = beam.choose(ranked, cfg.beam_config())
    chosen = beam.by_order(combos)
    # Ranked on a partial first-order group: what it lacked, so that a resume which completes
    # those ranks again (`driver.went_without`), even after a crash that kept this choice.
    without = [w for d in unit.deps for w in (read_partial(storage, d) or {}).get("without", [])]
    storage.write_json(unit.outputs[0], {"target": target, "regime": regime, "ranked": ranked,
                                         "chosen": chosen, "skipped": skipped,
                                         "without": without})
    info: dict[str, Any] = {"chosen": len(combos)}
    return {**info, "skipped": skipped} if skipped else info


def render_config(cfg: sweep_config.SweepConfig, data_root: str) -> Any:
    """The renderer's config of the workflow's `data.render` section, into `data_root`."""
    from ..render import SynthConfig

    r = cfg.data.render
    assert r is not None  # the plan has a render unit only when the workflow asks for one
    return SynthConfig(out=data_root, points=r.points, views=r.views, size=r.size, seed=r.seed,
                       buildings=r.buildings)


def run_render(unit: planning.Unit, ctx: dict[str, Any]) -> dict[str, Any]:
    """Stage 0: render the built-in mini-Taskonomy into the data root, unless it is there."""
    from ..render import synthesize
    from ..render.synth import render_state

    cfg, storage = _context(ctx)
    synth = render_config(cfg, ctx["data_root"])
    state, why = render_state(synth)
    if state == "other":
        raise DataError(f"cannot render the mini-Taskonomy into the data root: {why}, and "
                        "rendering there would mix the two. Point data.root (or --data) to an "
                        "empty or missing folder, or drop the workflow's data.render section to "
                        "use the data there as it is")
    info: dict[str, Any] = {"root": ctx["data_root"], "adopted": state == "complete"}
    if state == "complete":  # rendered before (another storage, or a lost marker): same files
        info["views"] = synth.buildings * synth.points * synth.views
    else:
        result = synthesize(synth, progress=False)
        info.update(views=result.views, bytes=result.bytes, seconds=result.seconds)
    storage.write_json(unit.outputs[0], info)
    return info


def run_analysis(unit: planning.Unit, ctx: dict[str, Any]) -> dict[str, Any]:
    """Stages 3-5: affinities from every loss table, the default taxonomy, the report."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from .. import affinity, taxonomy

    cfg, storage = _context(ctx)
    # The taxonomy of an earlier analysis goes first: were any step below to fail, the earlier
    # affinities and taxonomy left side by side would look like a finished analysis on resume.
    storage.delete("taxonomy.json")
    # plan.json is complete here (the analysis waits for every beam): read only its units'
    # losses, not those of units that a changed config replaced.
    plan = storage.read_record(planning.PLAN_FILE, "units")["units"]
    current = [u["key"] for u in plan if planning.losses_path(u["key"]) in u["outputs"]]
    set_aside_superseded(storage, current)  # `losses/` then holds this run's tables only
    losses = storage.read_losses(current)
    # A target whose gold or scratch network failed cannot be ranked; the others still can
    # (the sweep lists the failures, and a resume that completes them redoes this analysis).
    kinds = losses.group_by(["target", "kind", "regime"]).aggregate([]).to_pylist()
    gold = {k["target"] for k in kinds if k["kind"] == "gold"}
    scratch = {(k["target"], k["regime"]) for k in kinds if k["kind"] == "scratch"}
    left_out = sorted(t for t in cfg.targets
                      if t not in gold or any((t, r) not in scratch for r in cfg.regimes))
    if left_out:
        losses = losses.filter(pc.invert(pc.is_in(losses.column("target"),
                                                  pa.array(left_out))))
    table = affinity.compute_affinities(losses)
    storage.write_affinities(table)
    # A target left out, or a task with no transfer at the solved regime, is not in the problem
    # (as the solver builds it) to weigh.
    spec = taxonomy.ProblemSpec(max_order=cfg.solve.max_order, regime=max(cfg.regimes))
    unweighed = taxonomy.build_problem(table, spec)
    spec = replace(spec, importance={t: w for t, w in cfg.solve.importance.items()
                                     if t in unweighed.targets},
                   costs={n: c for n, c in cfg.solve.costs.items()
                          if n in unweighed.supervisable})
    solved = taxonomy.solve_taxonomy(table, spec, cfg.solve.budget)
    # What the workflow asked, before the above: a resume compares it (`driver._solved_as_asked`).
    storage.write_json("taxonomy.json",
                       {**solved.to_json(), "workflow_solve": cfg.solve.weighing()})
    return {"transfers": table.num_rows, "objective": solved.objective,
            "supervised": list(solved.supervised), "left_out": left_out}


EXECUTORS = {
    "render": run_render,
    "gold": run_gold,
    "scratch": run_scratch,
    "features": run_features,
    "transfer": run_transfer,
    "beam": run_beam,
    "analysis": run_analysis,
}


def execute(unit: planning.Unit, ctx: dict[str, Any]) -> dict[str, Any]:
    """Run one unit of any stage; the device memory it cached goes back when it ends."""
    release_device_memory()  # (what an earlier unit's failure kept alive until now)
    check_gpu_visible(unit)
    try:
        return EXECUTORS[unit.stage](unit, ctx)
    finally:
        release_device_memory()


def release_device_memory() -> None:
    """Hand the CUDA memory torch's allocator holds in this process back to the device.

    A worker process outlives its unit (`resources.max_calls`), and Ray counts the unit's share
    of the GPU free once it ends: memory the allocator kept cached would then be missing from
    the next unit's share, in another process, which would run out of memory.
    """
    torch = sys.modules.get("torch")  # (a unit that never imported torch has nothing cached)
    if torch is None or not torch.cuda.is_initialized():
        return
    import gc

    gc.collect()  # tensors held by reference cycles (a failed unit's traceback frames)
    torch.cuda.empty_cache()


# The CUDA_VISIBLE_DEVICES under which this worker process's first GPU unit ran: CUDA reads it
# once per process, so the GPU that process uses stays that one whatever Ray assigns later.
_FIRST_GPUS: list[str | None] = []


def check_gpu_visible(unit: planning.Unit) -> None:
    """A unit Ray gave a GPU must see one: else `auto` devices train on the CPU, unannounced.

    A worker whose torch is a CPU build, or whose CUDA driver is older than the build needs,
    would otherwise run every unit many times slower while holding the cluster's GPUs.
    """
    import ray

    ids = ray.get_gpu_ids() if ray.is_initialized() else []
    if not ids:
        return
    import socket

    import torch

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not _FIRST_GPUS:
        _FIRST_GPUS.append(visible)
    elif _FIRST_GPUS[0] != visible:
        raise TrainingError(
            f"unit {unit.key}: Ray gave it GPU {ids} on {socket.gethostname()}, but this worker "
            f"process already trained on GPU {_FIRST_GPUS[0]}, and CUDA cannot switch devices "
            "in a running process: the unit would share that GPU with another while its own "
            "sat idle. On nodes with several GPUs set resources.max_calls: 1 (a fresh worker "
            "for every GPU unit) and resume; finished units are kept")
    if not torch.cuda.is_available():
        raise TrainingError(
            f"unit {unit.key}: Ray gave it GPU {ids} on {socket.gethostname()}, but torch "
            f"{torch.__version__} (CUDA build: {torch.version.cuda}) sees no CUDA device; "
            "install a CUDA build of torch that the node's driver supports (nvidia-smi shows "
            "the driver's CUDA version), or set resources.gpus_per_unit: 0 to run on CPUs")
