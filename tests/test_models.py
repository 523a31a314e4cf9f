"""Task networks: every task builds, runs a tiny forward pass and gives finite per-image losses."""

from __future__ import annotations

import pytest
import torch

from taskonomy_ray.config import ModelConfig, preset
from taskonomy_ray.dataset import output_channels
from taskonomy_ray.models import build_task_network, network_input, per_image_loss
from taskonomy_ray.models.encoder import Encoder, random_encoder
from taskonomy_ray.tasks import TASKS

TINY = ModelConfig(image_size=32, width=4, decoder_width=8, head_width=16, jigsaw_classes=10,
                   embedding_dim=4)
RESNET50_TRUNK_PARAMS = 23_508_032  # ResNet-50 without its fc layer (25,557,032 - 2,049,000)


# One torch thread: timings and results do not depend on what else runs (conftest).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _fake_batch(spec, channels: int, b: int = 3, s: int = 32) -> dict:
    g = torch.Generator().manual_seed(0)
    shape = (b, spec.views, 3, s, s) if spec.views > 1 else (b, 3, s, s)
    batch = {"rgb": torch.rand(shape, generator=g), "image": [f"x/point_{i}_view_0"
                                                           for i in range(b)]}
    if spec.input != "rgb":
        batch[f"{spec.name}_input"] = torch.rand(b, 3, s, s, generator=g)
    if spec.output == "pixel_regression":
        batch[spec.name] = torch.rand(b, channels, s, s, generator=g)
    elif spec.output in ("pixel_classes", "pixel_embedding"):
        high = channels if spec.output == "pixel_classes" else 4
        batch[spec.name] = torch.randint(0, high, (b, s, s), generator=g)
    elif spec.output == "class_distribution":
        batch[spec.name] = torch.softmax(torch.randn(b, channels, generator=g), 1)
    elif spec.loss == "cross_entropy":
        batch[spec.name] = torch.randint(0, channels, (b,), generator=g)
    elif spec.output != "none":
        batch[spec.name] = torch.randn(b, channels, generator=g)
    if spec.masked:
        batch[f"{spec.name}_mask"] = torch.rand(b, 1, s, s, generator=g) > 0.2
    return batch


@pytest.mark.parametrize("spec", TASKS, ids=lambda s: s.name)
def test_every_task_network_builds_runs_and_gives_finite_per_image_losses(spec) -> None:
    channels = output_channels(spec.name, None, jigsaw_classes=TINY.jigsaw_classes,
                               embedding_dim=TINY.embedding_dim)
    net = build_task_network(spec.name, TINY, channels, seed=0)
    batch = _fake_batch(spec, channels)
    out = net(network_input(spec, batch))
    if spec.output == "none":
        assert out.shape == (3, 8, 2, 2)
        assert not any(p.requires_grad for p in net.parameters())
        return
    loss = per_image_loss(spec, out, batch)
    assert loss.shape == (3,) and torch.isfinite(loss).all()
    loss.mean().backward()
    assert all(p.grad is not None for p in net.decoder.parameters())


def test_paper_encoder_maps_256_rgb_to_16x16x8_with_resnet50_trunk() -> None:
    enc = Encoder(preset("paper").model).eval()
    assert enc.trunk_parameters() == RESNET50_TRUNK_PARAMS
    with torch.no_grad():
        assert enc(torch.zeros(1, 3, 256, 256)).shape == (1, 8, 16, 16)


def test_mini_preset_keeps_the_topology_at_a_fraction_of_the_size() -> None:
    mini = Encoder(preset("mini").model)
    paper = Encoder(preset("paper").model)
    assert [len(s) for s in mini.stages] == [len(s) for s in paper.stages] == [3, 4, 6, 3]
    assert mini.trunk_parameters() < RESNET50_TRUNK_PARAMS / 50
    assert mini(torch.zeros(2, 3, 64, 64)).shape == (2, 8, 4, 4)


def test_random_encoder_is_the_same_for_a_seed_and_frozen() -> None:
    a, b = random_encoder(TINY, 7), random_encoder(TINY, 7)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
        assert not torch.equal(a(x), random_encoder(TINY, 8)(x))
    assert not any(p.requires_grad for p in a.parameters())


def test_masked_l1_ignores_invalid_pixels() -> None:
    spec = next(t for t in TASKS if t.name == "depth_zbuffer")
    label = torch.zeros(2, 1, 4, 4)
    pred = torch.zeros(2, 1, 4, 4)
    pred[:, :, 0, 0] = 100.0  # wrong only where the mask is off
    mask = torch.ones(2, 1, 4, 4, dtype=torch.bool)
    mask[:, :, 0, 0] = False
    loss = per_image_loss(spec, pred, {"depth_zbuffer": label, "depth_zbuffer_mask": mask})
    assert torch.equal(loss, torch.zeros(2))


def test_semantic_loss_skips_uncertain_pixels_and_metric_pairs_are_fixed_per_image() -> None:
    seg = next(t for t in TASKS if t.name == "segment_semantic")
    logits = torch.zeros(1, 5, 4, 4)
    logits[:, 2] = 10.0
    label = torch.full((1, 4, 4), 2)
    label[0, 0] = 0  # uncertain row: any prediction is fine there
    assert per_image_loss(seg, logits, {"segment_semantic": label}).item() < 1e-3
    emb = next(t for t in TASKS if t.name == "segment_unsup2d")
    batch = {"segment_unsup2d": torch.randint(0, 3, (2, 8, 8)), "image": ["a", "b"]}
    pred = torch.randn(2, 4, 8, 8)
    one = per_image_loss(emb, pred, batch, deterministic=True)
    alone = per_image_loss(emb, pred[1:], {"segment_unsup2d": batch["segment_unsup2d"][1:],
                                           "image": ["b"]}, deterministic=True)
    assert torch.allclose(one[1:], alone)


def test_output_bias_starts_at_the_mean_label_or_class_prior() -> None:
    from taskonomy_ray.models import init_output_bias
    from taskonomy_ray.tasks import get_task

    net = build_task_network("depth_zbuffer", TINY, 1, seed=0)
    mask = torch.ones(2, 1, 4, 4, dtype=torch.bool)
    mask[:, :, 0] = False
    label = torch.full((2, 1, 4, 4), 4.0)
    label[:, :, 0] = 120.0  # invalid pixels do not count
    init_output_bias(net.decoder, get_task("depth_zbuffer"),
                     {"depth_zbuffer": label, "depth_zbuffer_mask": mask})
    assert net.decoder.net[-1].bias.tolist() == pytest.approx([4.0])
    cls = build_task_network("point_matching", TINY, 2, seed=0)
    init_output_bias(cls.decoder, get_task("point_matching"),
                     {"point_matching": torch.tensor([1, 1, 1, 0])})
    b = cls.decoder.net[-1].bias
    assert b[1] > b[0]


@pytest.mark.parametrize("groups", [1, 3])
def test_upconv_equals_nearest_upsampling_then_a_3x3_conv_in_value_and_gradient(groups) -> None:
    from taskonomy_ray.models.decoders import UpConv2d

    torch.manual_seed(0)
    up = UpConv2d(groups * 5, groups * 4, groups=groups, dtype=torch.float64)
    ref = torch.nn.Sequential(torch.nn.Upsample(scale_factor=2, mode="nearest"),
                              torch.nn.Conv2d(groups * 5, groups * 4, 3, 1, 1, groups=groups,
                                              dtype=torch.float64))
    ref[1].load_state_dict(up.state_dict())  # the same 3x3 parameters, nothing else
    x = torch.randn(2, groups * 5, 6, 7, dtype=torch.float64, requires_grad=True)
    a, b = up(x), ref(x)
    assert a.shape == (2, groups * 4, 12, 14)
    assert torch.allclose(a, b, atol=1e-12)
    g = torch.randn_like(a)
    ga = torch.autograd.grad(a, [x, up.weight, up.bias], g)
    gb = torch.autograd.grad(b, [x, ref[1].weight, ref[1].bias], g)
    for u, v in zip(ga, gb):
        assert torch.allclose(u, v, atol=1e-10)


def test_upconv_refuses_anything_but_a_3x3_stride_1_padding_1_conv() -> None:
    from taskonomy_ray.models.decoders import UpConv2d

    with pytest.raises(ValueError, match="3x3 conv with stride 1"):
        UpConv2d(4, 4, kernel_size=5, padding=2)
