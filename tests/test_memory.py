"""What a transfer unit holds, estimated from its heads: and the chunking that bounds it."""

from pathlib import Path

import pytest
import yaml

from taskonomy_ray import memory
from taskonomy_ray.config import TransferConfig, preset
from taskonomy_ray.errors import ConfigError
from taskonomy_ray.transfer import build_transfer_net

MINI = preset("mini").model
PAPER = preset("paper").model
ROOT = Path(__file__).resolve().parents[1]


def test_weights_count_every_parameter_with_its_gradient_and_adam_moments():
    cost = memory.head_cost("normal", 2, MINI, 3)
    net = build_transfer_net("normal", ["reshading", "random"], 16, MINI, TransferConfig(), 3, 16)
    assert cost.weights == 16 * sum(p.numel() for p in net.parameters())


def test_saved_activations_cover_the_decoders_full_resolution_layers():
    # A paper dense decoder's last upsampling stage alone is 16 channels at 256 x 256 (4 MiB
    # per image); a training step saves several such maps, a test pass keeps about two at once.
    cost = memory.head_cost("normal", 1, PAPER, 3)
    last_stage = 16 * 256 * 256 * 4
    assert 2 * last_stage < cost.train_per_image < 8 * last_stage
    assert last_stage <= cost.eval_per_image < 4 * last_stage
    vector = memory.head_cost("room_layout", 1, PAPER, 9)
    assert vector.train_per_image < cost.train_per_image / 20 < vector.weights


def test_heads_alike_share_one_measurement():
    assert memory.head_cost("depth_zbuffer", 1, MINI, 1) == memory.head_cost("edge_occlusion",
                                                                             1, MINI, 1)


def test_fit_chooses_the_most_heads_and_test_samples_the_device_budget_holds():
    cost = memory.head_cost("normal", 1, MINI, 3)
    cfg = TransferConfig(batch_size=16, eval_batch_size=10_000)
    per_head = cost.weights + 16 * cost.train_per_image
    budget = 5.5 * per_head  # what the heads may count; the setting adds the measured margin
    fitted = memory.fit("normal", 1, MINI, TransferConfig(**{
        **cfg.__dict__, "device_memory_gb": budget * memory.MARGIN / 1e9}), 3)
    assert fitted.max_heads == 5
    assert fitted.eval_batch_size * 5 * cost.eval_per_image <= budget - 5 * cost.weights
    assert (fitted.eval_batch_size + 1) * 5 * cost.eval_per_image > budget - 5 * cost.weights
    assert memory.fit("normal", 1, MINI, cfg, 3) == cfg  # no budget: as configured
    tiny = TransferConfig(device_memory_gb=0.9 * per_head / 1e9, batch_size=16)
    with pytest.raises(ConfigError, match="device_memory_gb .* cannot hold one transfer"):
        memory.fit("normal", 1, MINI, tiny, 3)


def test_chunks_bound_both_heads_and_the_sources_they_read():
    singles = [[s] for s in "abcdefg"]
    assert [len(c) for c in memory.chunks(singles, 3)] == [3, 3, 1]
    assert [len(c) for c in memory.chunks(singles, 32, max_sources=2)] == [2, 2, 2, 1]
    pairs = [["a", "b"], ["a", "c"], ["b", "c"], ["a", "d"]]
    parts = memory.chunks(pairs, 32, max_sources=3)
    assert parts == [[["a", "b"], ["a", "c"], ["b", "c"]], [["a", "d"]]]
    with pytest.raises(ConfigError, match="feature_memory_gb holds the representations of 1"):
        memory.chunks(pairs, 32, max_sources=1)


def test_a_unit_holds_one_chunks_features_and_its_labels_only_when_they_fit():
    cfg = TransferConfig(batch_size=16, max_heads=8, label_memory_gb=0.01)  # 10.7 MB
    singles = [[f"s{i}"] for i in range(26)]
    one = memory.source_bytes("normal", 128 + 600, MINI, cfg)
    assert one == (128 + 600) * 8 * 4 * 4 * 4  # 4x4x8 float32 per sample
    est = memory.unit_memory("normal", singles, 128, 600, MINI, cfg, 3)
    assert est.features == 8 * one and est.labels == 128 * (64 * 64 * 3 * 4 + 64 * 64)
    big = memory.unit_memory("normal", singles, 512, 600, MINI, cfg, 3)
    assert big.labels == 0  # 512 labels exceed label_memory_gb: read step by step
    bounded = TransferConfig(**{**cfg.__dict__, "feature_memory_gb": 3.5 * one / 1e9})
    assert memory.unit_memory("normal", singles, 128, 600, MINI, bounded, 3).features == 3 * one


def test_the_paper_workflow_fits_two_units_on_each_gpu_worker_of_cluster_yaml():
    # workflows/paper.yaml runs on cluster.yaml's g5.2xlarge workers: one A10G (24 GB), 32 GB
    # of RAM, of which Ray's memory resource is 70%. Every transfer unit shape must fit its GPU
    # share (less ~1 GB of CUDA context) and its memory reservation (less ~3 GB of process).
    from taskonomy_ray.sweep import config
    from taskonomy_ray.sweep.resources import transfer_memory

    worker = yaml.safe_load((ROOT / "cluster.yaml").read_text())["available_node_types"]
    assert worker["gpu_worker"]["node_config"]["InstanceType"] == "g5.2xlarge"
    gpu_gb, ram_gb = 24, 32
    cfg = config.load(ROOT / "workflows/paper.yaml")
    r = cfg.resources
    per_node = round(1 / r.gpus_per_unit)
    assert per_node * r.transfer_memory_gb <= 0.7 * ram_gb
    assert per_node * r.cpus_per_unit <= 8
    for unit, est in transfer_memory(cfg, cfg.data.test_images).items():
        assert est.device / 1e9 <= r.gpus_per_unit * gpu_gb - 1, unit
        assert est.host / 1e9 + 3 <= r.transfer_memory_gb, unit
