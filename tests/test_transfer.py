"""The transfer function and one transfer unit of work, end to end on a tiny root."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from fixtures import make_root

from taskonomy_ray import features, tables
from taskonomy_ray.config import preset
from taskonomy_ray.errors import ConfigError, DataError, StorageError, TrainingError
from taskonomy_ray.fused import train_transfer_group
from taskonomy_ray.labels import (
    StreamedLabels,
    label_keys,
    load_labels,
    read_rows,
    training_labels,
)
from taskonomy_ray.tables import LOSSES_SCHEMA, Storage
from taskonomy_ray.transfer import Readout, TransferConfig, build_transfer_net, take

MODEL = preset("mini").model  # 64 px -> 4x4x8 representations
CFG = TransferConfig(steps=2, batch_size=4, eval_batch_size=8)


# One torch thread: timings and results do not depend on what else runs (conftest).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return make_root(tmp_path_factory.mktemp("transfer"), buildings=3, points=4, views=3,
                     size=32)


def test_readout_has_two_streams_of_8k_channels_per_k_sources():
    for k in (1, 3):
        r = Readout(k)
        convs = [m for m in r.modules() if isinstance(m, torch.nn.Conv2d)]
        assert len(convs) == 4 and all(c.kernel_size == (3, 3) and c.stride == (1, 1)
                                       for c in convs)
        assert {c.out_channels for c in convs} == {8 * k}
        assert r.bn_in.num_features == 8 * k and r.bn_out.num_features == 16 * k
        assert r(torch.randn(4, 8 * k, 4, 4)).shape == (4, 16 * k, 4, 4)


def test_inputs_are_clipped_to_five_sigma_of_the_training_representations():
    r = Readout(1)
    train = torch.randn(64, 8, 4, 4)
    r.set_clip(train, 5.0)
    hi = train.mean((0, 2, 3)) + 5 * train.std((0, 2, 3))
    torch.testing.assert_close(r.hi.flatten(), hi)
    r.eval()
    outlier = torch.zeros(2, 8, 4, 4)
    outlier[:, 0] = 1e6
    capped = outlier.clone()
    capped[:, 0] = hi[0]
    torch.testing.assert_close(r(outlier), r(capped))


def test_a_readout_reads_a_tiny_scale_source_as_it_reads_a_unit_scale_one():
    # The random encoder's outputs have sigma ~1e-3 (some channels 1e-6): below batch norm's
    # eps they were damped into a near-constant input, and that source, fitting nothing, won
    # every sparse target of the demo. Standardised first, the scale no longer matters.
    torch.manual_seed(0)
    x = torch.randn(64, 8, 4, 4) * torch.logspace(0, -6, 8)[None, :, None, None]  # 1 .. 1e-6
    unit = x / x.std((0, 2, 3), keepdim=True)
    tiny, plain = Readout(1), Readout(1)
    plain.load_state_dict(tiny.state_dict())
    tiny.set_clip(x, 5.0)
    plain.set_clip(unit, 5.0)
    torch.testing.assert_close(tiny(x), plain(unit), rtol=1e-4, atol=1e-4)  # (training mode)
    for flat in (torch.ones(8, 8, 4, 4),  # no spread, a subnormal one, rounding noise only
                 torch.randn(8, 8, 4, 4) * 1e-39, 1 + torch.randn(8, 8, 4, 4) * 1e-7):
        constant = Readout(1)
        constant.set_clip(flat, 5.0)
        assert torch.equal(constant.scale, torch.ones_like(constant.scale))  # left unscaled
        assert torch.isfinite(constant(flat)).all()


def test_a_transfer_into_depth_starts_at_its_labels_mean_alone_and_fused():
    # Log-depth labels sit near 7: from a zero output a few hundred steps are spent reaching
    # that mean, and every transfer into depth lost to its gold network whatever the source.
    from taskonomy_ray.fused import train_fused
    from taskonomy_ray.transfer import evaluate, train_transfer

    g = torch.Generator().manual_seed(0)
    n, size = 16, MODEL.image_size
    labels = {"depth_zbuffer": 7.0 + 0.2 * torch.randn(n, 1, size, size, generator=g),
              "depth_zbuffer_mask": torch.ones(n, 1, size, size, dtype=torch.bool)}
    feats = torch.randn(n, 8, MODEL.rep_size, MODEL.rep_size, generator=g)
    images = [f"i{i}" for i in range(n)]
    alone = build_transfer_net("depth_zbuffer", ("normal",), 16, MODEL, CFG, 1, n)
    alone.readout.set_clip(feats, CFG.clip_sigma)
    train_transfer(alone, "depth_zbuffer", lambda idx: feats[idx], labels, n, CFG)
    loss = evaluate(alone, "depth_zbuffer", lambda idx: feats[idx], labels, images, CFG)
    assert loss.mean() < 1.0  # the labels' spread (0.16), not their distance from 0 (7)
    heads = [build_transfer_net("depth_zbuffer", (s,), 16, MODEL, CFG, 1, n)
             for s in ("normal", "reshading")]
    for h in heads:
        h.readout.set_clip(feats, CFG.clip_sigma)
    train_fused(heads, "depth_zbuffer", lambda idx: torch.stack([feats[idx]] * 2), labels, n,
                CFG)
    for h in heads:
        assert abs(float(h.decoder.net[-1].bias.detach()) - 7.0) < 0.1


def test_initialisation_is_seeded_per_transfer_not_by_the_global_rng():
    torch.manual_seed(1)
    a = build_transfer_net("normal", ("reshading",), 128, MODEL, CFG, 3, 16)
    torch.manual_seed(2)
    b = build_transfer_net("normal", ("reshading",), 128, MODEL, CFG, 3, 16)
    c = build_transfer_net("normal", ("depth_zbuffer",), 128, MODEL, CFG, 3, 16)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    assert not torch.equal(a.decoder.net[0][0].weight, c.decoder.net[0][0].weight)
    assert a.decoder.net[0][0].in_channels == 16  # the readout's 16k channels, not t's 8


def test_multi_view_targets_read_every_views_representation():
    net = build_transfer_net("egomotion", ("normal", "random"), 16, MODEL, CFG, 18, 8).eval()
    x = torch.randn(2, 3, 16, 4, 4)  # (B, V, 8k, h, w)
    y = x.clone()
    y[:, 2] += 1.0  # change only the third view
    assert net(x).shape == (2, 18)
    assert not torch.allclose(net(x), net(y))


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ConfigError, match="did you mean 'steps'"):
        TransferConfig.from_dict({"step": 3})
    with pytest.raises(ConfigError, match="batch norm"):
        TransferConfig(batch_size=1)
    assert TransferConfig.from_dict({"steps": 3}).steps == 3
    # A value of the wrong type names its key (it was Python's "'>=' not supported ...").
    with pytest.raises(ConfigError, match="transfer.steps should be a int, got 'abc'"):
        TransferConfig.from_dict({"steps": "abc"})
    with pytest.raises(ConfigError, match="transfer.amp should be a str, got True"):
        TransferConfig.from_dict({"amp": True})  # (YAML's `on`)
    assert TransferConfig.from_dict({"lr": 1}).lr == 1.0  # an int stands for a float


def _cache(tmp_path: Path, root: Path, sources, imagesets) -> features.FeatureCache:
    # Random encoders with distinct seeds stand in for trained ones: same shapes, same code path.
    cache = features.FeatureCache(Storage(str(tmp_path / "run")),
                                  features.keyed_paths({s: f"seed{i}" for i, s in
                                                        enumerate(sources)}))
    for i, s in enumerate(sources):
        load = features.encoder_loader("random", None, MODEL, random_seed=i)
        for imageset in imagesets:
            features.cache_imageset(cache, s, imageset, load, str(root),
                                    image_size=MODEL.image_size)
    return cache


def test_a_transfer_unit_trains_every_order_and_scores_every_test_image(root, tmp_path):
    cache = _cache(tmp_path, root, ["normal", "reshading", "random"], ["r8", "test"])
    sets = [["normal"], ["reshading"], ["random"], ["normal", "reshading"]]
    table = train_transfer_group("depth_zbuffer", sets, 8, cache, str(root), CFG, MODEL,
                                 unit="transfer-depth_zbuffer-r8-test")
    assert table.schema.equals(LOSSES_SCHEMA)
    n_test = len(features.open_imageset(str(root), "test", image_size=64))
    assert table.num_rows == 4 * n_test
    per_transfer: dict[tuple, set] = {}
    for r in table.select(["sources", "image"]).to_pylist():
        per_transfer.setdefault(tuple(r["sources"]), set()).add(r["image"])
    assert {k: len(v) for k, v in per_transfer.items()} == {
        ("normal",): n_test, ("reshading",): n_test, ("random",): n_test,
        ("reshading", "normal"): n_test}  # sources spelt in registry order
    assert set(table.column("order").to_pylist()) == {1, 2}
    assert set(table.column("kind").to_pylist()) == {"transfer"}
    assert set(table.column("regime").to_pylist()) == {8}
    Storage(str(tmp_path / "run")).write_losses("transfer-depth_zbuffer-r8-test", table)
    again = Storage(str(tmp_path / "run")).read_losses()
    assert again.num_rows == table.num_rows


@pytest.mark.parametrize("bound", ["max_heads", "feature_memory_gb"])
def test_a_unit_in_chunks_holds_one_chunks_sources_and_trains_the_same_transfers(
        root, tmp_path, bound):
    # Chunks bound what a unit holds at once: device memory (heads x batch) and the cached
    # representations of the chunk's sources only; each head equals itself trained alone.
    cache = _cache(tmp_path, root, ["normal", "reshading", "random"], ["r8", "test"])
    n = len(features.open_imageset(str(root), "r8", image_size=64)) + len(
        features.open_imageset(str(root), "test", image_size=64))
    one_source = n * 8 * 4 * 4 * 4 / 1e9  # GB of one source's 4x4x8 float32 representations
    limit = {"max_heads": 1, "feature_memory_gb": 1.5 * one_source}[bound]
    sets = [["normal"], ["reshading"], ["random"]]
    whole = train_transfer_group("depth_zbuffer", sets, 8, cache, str(root), CFG, MODEL, unit="u")
    held = []
    load = cache.load

    def counting_load(source, imageset, images):
        out = load(source, imageset, images)
        held.append(len(cache._memo))
        return out

    cache.load = counting_load
    chunked = train_transfer_group("depth_zbuffer", sets, 8, cache, str(root),
                                   TransferConfig(**{**CFG.__dict__, bound: limit}), MODEL,
                                   unit="u")
    assert max(held) == 2  # one source's training and test sets, never three sources' six
    assert chunked.column("sources").to_pylist() == whole.column("sources").to_pylist()
    np.testing.assert_allclose(chunked.column("loss").to_numpy(), whole.column("loss").to_numpy(),
                               rtol=1e-4)  # float32: grouped and single kernels round apart


def test_running_out_of_device_memory_names_the_settings_that_fix_it(root, tmp_path,
                                                                      monkeypatch):
    import taskonomy_ray.fused as fused_module

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    cache = _cache(tmp_path, root, ["normal"], ["r8", "test"])
    monkeypatch.setattr(fused_module, "train_group", out_of_memory)
    with pytest.raises(TrainingError, match=r"(?s)ran out of device memory.*device_memory_gb.*"
                                            r"gpus_per_unit"):
        train_transfer_group("depth_zbuffer", [["normal"]], 8, cache, str(root), CFG, MODEL,
                             unit="u")


def test_the_test_batch_size_changes_no_loss(root, tmp_path):
    # eval_batch_size is an execution-only setting (left out of unit keys): mini.yaml scores 8
    # test images at a time because that is faster on a CPU, which must not move a single loss.
    cache = _cache(tmp_path, root, ["normal", "random"], ["r8", "test"])
    sets = [["normal"], ["random"]]
    tables_by_batch = [train_transfer_group("depth_zbuffer", sets, 8, cache, str(root),
                                            TransferConfig(**{**CFG.__dict__,
                                                              "eval_batch_size": bs}),
                                            MODEL, unit="u") for bs in (256, 3)]
    assert tables_by_batch[0].equals(tables_by_batch[1])


def test_a_device_budget_too_small_for_one_head_is_refused_naming_the_setting(root, tmp_path):
    cache = _cache(tmp_path, root, ["normal"], ["r8", "test"])
    tiny = TransferConfig(**{**CFG.__dict__, "device_memory_gb": 1e-6})
    with pytest.raises(ConfigError, match="transfer.device_memory_gb 1e-06 cannot hold one"):
        train_transfer_group("depth_zbuffer", [["normal"]], 8, cache, str(root), tiny, MODEL,
                             unit="u")


def test_multi_view_targets_use_their_own_image_sets(root, tmp_path):
    sets = ["r8-egomotion", "test-egomotion"]
    cache = _cache(tmp_path, root, ["normal"], sets)
    table = train_transfer_group("egomotion", [["normal"]], 8, cache, str(root), CFG, MODEL,
                                 unit="u")
    assert table.num_rows == len(features.open_imageset(str(root), "test-egomotion",
                                                        image_size=64))
    assert "+" in table.column("image")[0].as_py()  # a sample id names all its views


def test_missing_representations_say_to_run_the_cache_step(root, tmp_path):
    cache = _cache(tmp_path, root, ["normal"], ["test"])  # the training subset is not cached
    with pytest.raises(StorageError, match="run the feature cache step"):
        train_transfer_group("depth_zbuffer", [["normal"]], 8, cache, str(root), CFG, MODEL,
                             unit="u")


def test_losses_table_type_matches_the_design_schema():
    t = tables.losses_table("u", "transfer", "normal", ["a", "b"], 8, ["i"], [0.5])
    assert isinstance(t, pa.Table) and t.column("order")[0].as_py() == 2


@pytest.mark.parametrize("target", ["depth_zbuffer", "segment_semantic"])
def test_streamed_training_labels_train_the_same_transfers_as_labels_in_memory(
        root, tmp_path, target):
    # label_memory_gb 0 reads every step's batch from the data set, as a 16k dense regime does
    cache = _cache(tmp_path, root, ["normal", "random"], ["r8", "test"])
    sets = [["normal"], ["random"]]
    held = train_transfer_group(target, sets, 8, cache, str(root), CFG, MODEL, unit="u")
    for workers in (0, 1):  # read in this process, or ahead by a loader process
        streamed_cfg = TransferConfig(**{**CFG.__dict__, "label_memory_gb": 0.0,
                                         "num_workers": workers})
        streamed = train_transfer_group(target, sets, 8, cache, str(root), streamed_cfg,
                                        MODEL, unit="u")
        assert held.equals(streamed)


def test_training_labels_are_held_only_when_they_fit_the_memory_bound(root):
    data = features.open_imageset(str(root), "r8", image_size=64, tasks=["normal"])
    assert isinstance(training_labels(data, "normal", CFG), dict)
    small = TransferConfig(label_memory_gb=8 * 3 * 64 * 64 * 4 / 1024**3 * 0.99)  # < 8 images
    assert isinstance(training_labels(data, "normal", small), StreamedLabels)


def test_streamed_labels_read_a_batch_once_and_equal_the_loaded_rows(root):
    data = features.open_imageset(str(root), "test", image_size=64, tasks=["depth_zbuffer"])
    labels = StreamedLabels(data, label_keys("depth_zbuffer"))
    rows = torch.tensor([3, 0, 2])
    first, again = take(labels, rows), take(labels, rows)
    assert labels.reads == 1 and first.keys() == {"depth_zbuffer", "depth_zbuffer_mask"}
    _, every = load_labels(data, "depth_zbuffer")
    for k, v in every.items():
        assert torch.equal(first[k], v[rows]) and torch.equal(again[k], v[rows])
    take(labels, torch.tensor([1]))
    assert labels.reads == 2


def test_labels_read_ahead_follow_the_order_and_start_over_for_the_next_chunk(root):
    data = features.open_imageset(str(root), "test", image_size=64, tasks=["depth_zbuffer"])
    order = [torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4])]
    ahead = StreamedLabels(data, label_keys("depth_zbuffer"), order=order, workers=1)
    _, every = load_labels(data, "depth_zbuffer")
    asked = [*order, torch.tensor([3, 1]), order[0], order[1]]  # out of order, then over again
    for idx in asked:
        batch = take(ahead, idx)
        for k, v in every.items():
            assert torch.equal(batch[k], v[idx]), (k, idx)
    assert ahead.reads == len(asked)


def test_class_labels_are_held_in_uint8_and_batches_are_int64_again(root):
    data = features.open_imageset(str(root), "r8", image_size=64, tasks=["segment_semantic"])
    _, held = load_labels(data, "segment_semantic")
    assert held["segment_semantic"].dtype == torch.uint8  # 1/8 of the memory of int64
    batch = take(held, torch.arange(4))
    _, raw = read_rows(data, range(4), label_keys("segment_semantic"))
    assert batch["segment_semantic"].dtype == raw["segment_semantic"].dtype == torch.int64
    assert torch.equal(batch["segment_semantic"], raw["segment_semantic"])


def test_an_unreadable_test_label_is_a_data_error_naming_the_file(root, tmp_path):
    import shutil

    broken = tmp_path / "root"
    shutil.copytree(root, broken)
    test = features.open_imageset(str(broken), "test", image_size=64, tasks=["depth_zbuffer"])
    building, rest = test.images[0].split("/")
    victim = next((broken / building / "depth_zbuffer").glob(f"{rest}_domain_*"))
    victim.write_bytes(b"not a png")
    cache = _cache(tmp_path, broken, ["normal"], ["r8", "test"])
    with pytest.raises(DataError, match=victim.name):
        train_transfer_group("depth_zbuffer", [["normal"]], 8, cache, str(broken), CFG, MODEL,
                             unit="u")


def test_choosing_cuda_makes_float32_convolutions_ieee_not_tf32(monkeypatch):
    # cuDNN's default in torch is TF32 for float32 convolutions: `amp: off` would then not be
    # the float32 the docs' precision figures were measured in.
    from taskonomy_ray import transfer

    conv = torch.backends.cudnn.conv
    before = conv.fp32_precision
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    try:
        conv.fp32_precision = "tf32"
        assert transfer.resolve_device(TransferConfig(device="cpu")) == torch.device("cpu")
        assert conv.fp32_precision == "tf32"  # a CPU run leaves the setting alone
        assert transfer.resolve_device(TransferConfig(device="auto")).type == "cuda"
        assert conv.fp32_precision == "ieee"
    finally:
        conv.fp32_precision = before
