"""Fused training: every head of a group ends as if it had been trained alone."""

import copy

import pytest
import torch
from torch.nn import Conv2d

from taskonomy_ray.config import preset
from taskonomy_ray.errors import ConfigError, TrainingError
from taskonomy_ray.fused import evaluate_fused, stacked_inputs, train_fused, train_group
from taskonomy_ray.grouped import GroupedTransfers, VmapTransfers, fuse
from taskonomy_ray.tasks import get_task
from taskonomy_ray.transfer import TransferConfig, build_transfer_net, evaluate, train_transfer

MODEL = preset("mini").model  # 64 px -> 4x4x8 representations
CFG = TransferConfig(steps=3, batch_size=4, lr=1e-3)
SOURCES = [("autoencoding",), ("depth_zbuffer",), ("random",)]
N_TRAIN, N_TEST = 8, 4
SCALES = {"autoencoding": 1.0, "depth_zbuffer": 1e-2, "random": 1e-6}


def _labels(target, n, g, dtype):
    if target == "normal":  # dense, masked l1
        return {"normal": torch.rand(n, 3, 64, 64, generator=g, dtype=dtype),
                "normal_mask": torch.rand(n, 1, 64, 64, generator=g) > 0.2}
    if target == "segment_semantic":  # dense classes, id 0 (uncertain) left out
        return {"segment_semantic": torch.randint(0, 18, (n, 64, 64), generator=g)}
    if target == "principal_curvature":  # dense, masked l2
        return {"principal_curvature": torch.randn(n, 2, 64, 64, generator=g, dtype=dtype),
                "principal_curvature_mask": torch.rand(n, 1, 64, 64, generator=g) > 0.2}
    if target == "room_layout":  # vector head with dropout
        return {"room_layout": torch.randn(n, 9, generator=g, dtype=dtype)}
    return {"egomotion": torch.randn(n, 18, generator=g, dtype=dtype)}  # multi-view


def _group(target, channels, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    views = get_task(target).views
    shape = (8, 4, 4) if views == 1 else (views, 8, 4, 4)
    # Sources at their own scales (random's outputs are ~1e-3 of a trained encoder's), so a
    # head reading another head's input scale would show.
    feats = {s: torch.randn(n, *shape, generator=g).half().float() * SCALES[s]
             for s, n in [(s[0], N_TRAIN + N_TEST) for s in SOURCES]}
    train = {s: f[:N_TRAIN] for s, f in feats.items()}
    test = {s: f[N_TRAIN:] for s, f in feats.items()}
    nets = [build_transfer_net(target, ss, 16, MODEL, CFG, channels, N_TRAIN).to(dtype)
            for ss in SOURCES]
    for net, x in zip(nets, stacked_inputs(train, SOURCES)(torch.arange(N_TRAIN))):
        net.readout.set_clip(x, CFG.clip_sigma)
    return (nets, train, test, _labels(target, N_TRAIN, g, dtype),
            _labels(target, N_TEST, g, dtype))


@pytest.mark.parametrize("target,channels,backend", [
    ("normal", 3, "grouped"), ("room_layout", 9, "grouped"), ("egomotion", 18, "grouped"),
    ("segment_semantic", 18, "grouped"), ("principal_curvature", 2, "grouped"),
    ("normal", 3, "vmap"),
])
def test_each_fused_head_equals_the_same_transfer_trained_alone(target, channels, backend):
    # In float64, so that the only differences, rounding in grouped vs single convolutions,
    # stay far below what a wrong gradient, batch or dropout mask would cause.
    f64 = torch.float64
    torch.manual_seed(0)
    nets, train, test, labels, test_labels = _group(target, channels, f64)
    alone = [copy.deepcopy(n) for n in nets]
    images = [f"im{i}" for i in range(N_TEST)]
    cfg = TransferConfig(**{**CFG.__dict__, "fused_backend": backend})
    group = train_fused(nets, target, stacked_inputs(train, SOURCES, f64), labels, N_TRAIN, cfg)
    assert isinstance(group, GroupedTransfers if backend == "grouped" else VmapTransfers)
    fused_losses = evaluate_fused(group, target, stacked_inputs(test, SOURCES, f64), test_labels,
                                  images, cfg)
    torch.manual_seed(123)  # the global RNG must not matter: every draw is seeded per head
    for i, (net, ss) in enumerate(zip(alone, SOURCES)):
        def one(idx, ss=ss, feats=train):
            return stacked_inputs(feats, [ss], f64)(idx)[0]

        train_transfer(net, target, one, labels, N_TRAIN, cfg)
        losses = evaluate(net, target, lambda idx, ss=ss: stacked_inputs(test, [ss], f64)(idx)[0],
                          test_labels, images, cfg)
        torch.testing.assert_close(fused_losses[i], losses, rtol=1e-9, atol=1e-12)
        for (name, a), b in zip(net.state_dict().items(), nets[i].state_dict().values()):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-9, msg=name)


def test_heads_of_one_group_learn_different_functions():
    nets, train, _, labels, _ = _group("room_layout", 9)
    train_fused(nets, "room_layout", stacked_inputs(train, SOURCES), labels, N_TRAIN, CFG)
    w = [n.readout.stream_a[0].weight for n in nets]
    assert not torch.allclose(w[0], w[1])


def test_a_group_mixing_orders_is_refused():
    a = build_transfer_net("normal", ("autoencoding",), 16, MODEL, CFG, 3, N_TRAIN)
    b = build_transfer_net("normal", ("autoencoding", "random"), 16, MODEL, CFG, 3, N_TRAIN)
    with pytest.raises(ConfigError, match="split the group by order"):
        fuse([a, b])


def test_a_head_whose_loss_turns_non_finite_stops_the_group_naming_it():
    nets, train, _, labels, _ = _group("room_layout", 9)
    good = stacked_inputs(train, SOURCES)

    def inputs(idx):  # the second head's representations are broken
        x = good(idx).clone()
        x[1] = float("nan")
        return x

    with pytest.raises(TrainingError, match=r"non-finite loss at step 0 \(heads \[1\]\); lower"):
        train_fused(nets, "room_layout", inputs, labels, N_TRAIN, CFG)


def test_a_diverged_head_is_left_out_and_the_rest_end_as_trained_without_it():
    _, train, test, labels, test_labels = _group("room_layout", 9)
    images = [f"im{i}" for i in range(N_TEST)]
    broken = {**train, "depth_zbuffer": torch.full_like(train["depth_zbuffer"], float("nan"))}
    diverged = {}
    kept = train_group("room_layout", SOURCES, 16, broken, labels, test, test_labels, images,
                       MODEL, CFG, 9, diverged)
    assert diverged == {("depth_zbuffer",): "non-finite training loss at step 0"}
    without = train_group("room_layout", [SOURCES[0], SOURCES[2]], 16, train, labels, test,
                          test_labels, images, MODEL, CFG, 9)
    assert [ss for ss, _ in kept] == [ss for ss, _ in without] == [SOURCES[0], SOURCES[2]]
    for (_, a), (_, b) in zip(kept, without):
        assert (a == b).all()
    with pytest.raises(TrainingError, match=r"non-finite loss at step 0 \(heads \[1\]\)"):
        train_group("room_layout", SOURCES, 16, broken, labels, test, test_labels, images,
                    MODEL, CFG, 9)  # asked for no record: the group fails, as alone


def test_amp_on_runs_the_heads_in_bf16_and_keeps_float32_losses_close():
    nets, train, test, labels, test_labels = _group("normal", 3)
    plain = [copy.deepcopy(n) for n in nets]
    images = [f"im{i}" for i in range(N_TEST)]
    results, seen = {}, {}
    for amp, group_nets in (("on", nets), ("off", plain)):
        dtypes = seen[amp] = set()
        hook = torch.nn.modules.module.register_module_forward_hook(
            lambda m, i, o, dtypes=dtypes: dtypes.add(o.dtype) if isinstance(m, Conv2d) else None)
        cfg = TransferConfig(**{**CFG.__dict__, "amp": amp, "fused_backend": "grouped"})
        group = train_fused(group_nets, "normal", stacked_inputs(train, SOURCES), labels,
                            N_TRAIN, cfg)
        results[amp] = evaluate_fused(group, "normal", stacked_inputs(test, SOURCES),
                                      test_labels, images, cfg)
        hook.remove()
    assert seen == {"on": {torch.bfloat16}, "off": {torch.float32}}
    assert results["on"].dtype == results["off"].dtype == "float32"
    # bf16 keeps 8 bits of mantissa: the per-image losses move by rounding, not by much.
    assert not (results["on"] == results["off"]).all()
    torch.testing.assert_close(torch.from_numpy(results["on"]),
                               torch.from_numpy(results["off"]), rtol=0.05, atol=0)


@pytest.mark.parametrize("sets", [[("autoencoding",), ("autoencoding", "random")],
                                  [("autoencoding",), ("autoencoding",)]])
def test_a_group_of_mixed_orders_or_repeated_sets_is_refused_before_training(sets):
    _, train, test, labels, test_labels = _group("room_layout", 9)
    with pytest.raises(ConfigError, match="a fused group takes distinct source sets of one order"):
        train_group("room_layout", sets, 16, train, labels, test, test_labels,
                    [f"im{i}" for i in range(N_TEST)], MODEL, CFG, 9)
