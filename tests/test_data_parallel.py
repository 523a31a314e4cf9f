"""Data-parallel gold training: replicas split each batch and stay identical (no Ray needed).

Two processes join a gloo process group, as Ray Train's TorchTrainer workers do, and call the
same `training.train_gold` a single process calls.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from fixtures import make_root

from taskonomy_ray import checkpoints, config, replicas, training
from taskonomy_ray.dataset import TaskonomyDataset, batches
from taskonomy_ray.errors import ConfigError

CFG = {"model": {"image_size": 32, "width": 4, "decoder_width": 16, "head_width": 32},
       "train": {"steps": 8, "batch_size": 8, "lr": 3e-3, "checkpoint_every": 4}}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_root(tmp_path_factory.mktemp("ddp"), buildings=3, points=4, views=3, size=32)


def test_replicas_share_each_global_batch_without_overlap(root: Path) -> None:
    data = TaskonomyDataset(root, ["normal"], split="train")
    alone = [b["image"] for b in batches(data, 8, shuffle=True, seed=3, shard=(0, 1),
                                         drop_last=True)]
    shares = [[b["image"] for b in batches(data, 8, shuffle=True, seed=3, shard=(r, 2),
                                           drop_last=True)] for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == len(data) // 8  # every replica takes each step
    for first, second in zip(*shares, strict=True):
        assert len(first) == len(second) == 4 and not set(first) & set(second)
    # Together the replicas see each epoch's images once, like one process would.
    seen = sorted(i for share in shares for batch in share for i in batch)
    assert len(seen) == len(set(seen)) == sum(len(b) for b in alone)


def test_a_global_batch_that_does_not_split_among_replicas_is_refused(root: Path) -> None:
    data = TaskonomyDataset(root, ["normal"], split="train")
    with pytest.raises(ConfigError, match="multiple of the worker count"):
        next(batches(data, 9, shard=(0, 2)))


def test_more_replicas_than_training_samples_is_refused_naming_both(
        root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A replica with no share read as "no loadable sample" (a data error that was not one),
    # and it stopped alone while the others waited on it.
    samples = len(TaskonomyDataset(root, ["normal"], split="train"))
    monkeypatch.setattr(training, "replica", lambda: training.Replica(0, samples + 1))
    with pytest.raises(ConfigError, match=rf"split 'train' has {samples} samples, fewer than "
                                          rf"the {samples + 1} data-parallel replicas"):
        training.train_gold("normal", str(root), config.from_dict(CFG),
                            ckpt_dir=str(tmp_path / "ck"))


def _replica(rank: int, world: int, root: str, task: str, out: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{out}/rendezvous",
                                         rank=rank, world_size=world)
    try:
        cfg = config.from_dict(CFG)
        result = training.train_gold(task, root, cfg, ckpt_dir=f"{out}/rank{rank}")
        params = {k: v.detach().clone() for k, v in result.network.named_parameters()}
        with open(f"{out}/result{rank}.pkl", "wb") as f:
            pickle.dump({"history": result.history, "params": params,
                         "losses": None if result.losses is None else result.losses.num_rows}, f)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("task", ["normal", "class_scene"])
def test_two_replicas_train_one_identical_network(root: Path, tmp_path: Path, task: str) -> None:
    mp.spawn(_replica, args=(2, str(root), task, str(tmp_path)), nprocs=2, join=True)
    runs = [pickle.loads((tmp_path / f"result{r}.pkl").read_bytes()) for r in range(2)]
    # Gradients are averaged every step, so the replicas' weights never drift apart.
    for name, value in runs[0]["params"].items():
        torch.testing.assert_close(runs[1]["params"][name], value, rtol=0, atol=0)
    # The recorded loss is the mean over replicas, the same on both; and it falls.
    assert runs[0]["history"] == runs[1]["history"] and len(runs[0]["history"]) == 8
    assert sum(runs[0]["history"][-3:]) < sum(runs[0]["history"][:3])
    # Rank 0 keeps the checkpoint and scores the test split; the other replica only trains.
    test = TaskonomyDataset(root, [task], split="test")
    assert runs[0]["losses"] == len(test) and runs[1]["losses"] is None
    assert (tmp_path / "rank0" / checkpoints.CHECKPOINT_FILE).exists()
    assert not (tmp_path / "rank1" / checkpoints.CHECKPOINT_FILE).exists()


class _SharedHooks:
    """As under Ray Train: rank 0 saves the one checkpoint, every replica resumes from it."""

    def __init__(self, folder: str, crash_at: int | None) -> None:
        self.local, self.crash_at = checkpoints.LocalHooks(folder), crash_at

    def load(self):  # noqa: ANN201
        return self.local.load()

    def save(self, state, metrics) -> None:  # noqa: ANN001
        self.local.save(state, metrics)
        self.report(metrics)

    def report(self, metrics) -> None:  # noqa: ANN001
        if metrics["step"] == self.crash_at:  # the process dies here, as a killed worker would
            os._exit(0)  # (a raised error left the gloo group to tear down: it could abort)


def _resumable_replica(rank: int, world: int, root: str, out: str, run: str,
                       crash_at: int | None) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{out}/rdv-{run}",
                                         rank=rank, world_size=world)
    try:
        cfg = config.from_dict({**CFG, "train": {**CFG["train"], "steps": 6,
                                                 "checkpoint_every": 3}})
        result = training.train_gold("class_object", root, cfg,
                                     hooks=_SharedHooks(f"{out}/ckpt-{run}", crash_at))
        params = {k: v.detach().clone() for k, v in result.network.named_parameters()}
        with open(f"{out}/{run}{rank}.pkl", "wb") as f:
            pickle.dump({"params": params, "next_draw": torch.rand(4)}, f)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_replicas_draw_their_own_randomness_and_resume_it_exactly(root: Path,
                                                                  tmp_path: Path) -> None:
    # class_object's head has dropout: every replica draws masks at every step.
    def spawn(run: str, crash_at: int | None) -> None:
        mp.spawn(_resumable_replica, args=(2, str(root), str(tmp_path), run, crash_at),
                 nprocs=2, join=True)

    spawn("whole", None)
    spawn("cut", 3)  # stops right after the step-3 checkpoint
    (tmp_path / "rdv-cut").unlink(missing_ok=True)
    spawn("cut", None)  # resumes from it
    whole, cut = ([pickle.loads((tmp_path / f"{run}{r}.pkl").read_bytes()) for r in range(2)]
                  for run in ("whole", "cut"))
    # Independent streams, as one process training the whole batch would draw...
    assert not torch.equal(whole[0]["next_draw"], whole[1]["next_draw"])
    # ...and each replica resumes its own: the resumed run ends where the uninterrupted one did.
    for r in range(2):
        assert torch.equal(cut[r]["next_draw"], whole[r]["next_draw"])
        for name, value in whole[r]["params"].items():
            torch.testing.assert_close(cut[r]["params"][name], value, rtol=0, atol=0)


@pytest.mark.parametrize(("backend", "device", "expected"), [
    ("gloo", torch.device("cpu"), "cpu"),
    ("gloo", torch.device("cuda", 1), "cpu"),
    # NCCL registers CUDA only ("cuda:nccl"); "cuda:gloo" is such a group on a CPU-only build:
    # a CPU tensor in its all-reduce fails ("No backend type associated with device type cpu").
    ("cuda:gloo", torch.device("cuda", 1), "cuda:1"),
])
def test_the_loops_collectives_use_a_device_the_process_groups_backend_takes(
        tmp_path: Path, backend: str, device: torch.device, expected: str) -> None:
    torch.distributed.init_process_group(backend, init_method=f"file://{tmp_path}/rendezvous",
                                         rank=0, world_size=1)
    try:
        assert replicas.collective_device(device) == torch.device(expected)
    finally:
        torch.distributed.destroy_process_group()


def test_a_replica_trains_on_the_gpu_its_launcher_made_current_not_gpu_local_rank(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Ray Train makes the GPU it assigned a worker current; that GPU need not be the node's
    # GPU number local_rank, which another unit may hold (a transfer with half a GPU).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    monkeypatch.setenv("LOCAL_RANK", "1")
    tc = config.NetworkConfig().train
    assert training.resolve_device(tc) == torch.device("cuda", 3)
