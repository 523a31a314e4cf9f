import numpy as np
import pytest
import torch

from taskonomy_ray import features
from taskonomy_ray.errors import ConfigError, StorageError, TrainingError
from taskonomy_ray.tables import Storage


class CountingEncoder(torch.nn.Module):
    """A frozen stand-in encoder: (B, 3, 16, 16) -> (B, 8, 1, 1); counts images it encodes."""

    def __init__(self, fail_after: int | None = None):
        super().__init__()
        self.proj = torch.nn.Conv2d(3, 8, 16)
        self.seen = 0
        self.fail_after = fail_after

    def forward(self, x):
        if self.fail_after is not None and self.seen >= self.fail_after:
            raise RuntimeError("encoder crashed mid-way")
        self.seen += x.shape[0]
        return self.proj(x)


def _samples(n=10, views=None):
    g = torch.Generator().manual_seed(0)
    shape = (3, 16, 16) if views is None else (views, 3, 16, 16)
    return [{"image": f"b0/point_{i}_view_0", "rgb": torch.rand(shape, generator=g)}
            for i in range(n)]


def _cache(tmp_path, dtype="float16"):
    keys = {"normal": "gold-normal-abc", "random": "random-0"}
    return features.FeatureCache(Storage(str(tmp_path)), features.keyed_paths(keys), dtype)


def test_cache_is_written_once_and_reused(tmp_path):
    cache, enc, samples = _cache(tmp_path), CountingEncoder(), _samples()
    rel = cache.ensure("normal", "r8", enc, samples, batch_size=4)
    assert enc.seen == 10 and cache.storage.exists(rel)
    again = _cache(tmp_path)  # a fresh process: nothing memoised
    loader_calls = []
    rel2 = again.ensure("normal", "r8", lambda: loader_calls.append(1) or enc, samples,
                        images=[s["image"] for s in samples], lazy=True)
    assert rel2 == rel and enc.seen == 10 and loader_calls == []
    got = again.load("normal", "r8", [s["image"] for s in samples])
    assert got.shape == (10, 8, 1, 1) and got.dtype == np.float16
    with torch.no_grad():
        want = enc.proj(torch.stack([s["rgb"] for s in samples])).numpy()
    np.testing.assert_allclose(got.astype(np.float32), want, rtol=2e-3, atol=2e-3)


def test_load_returns_the_requested_images_in_order(tmp_path):
    cache, samples = _cache(tmp_path, "float32"), _samples()
    cache.ensure("normal", "r8", CountingEncoder(), samples)
    ids = [s["image"] for s in samples]
    full = cache.load("normal", "r8", ids)
    np.testing.assert_array_equal(cache.load("normal", "r8", ids[::-1]), full[::-1])
    np.testing.assert_array_equal(cache.load("normal", "r8", ids[3:5]), full[3:5])


def test_the_whole_set_in_order_is_served_without_a_copy(tmp_path):
    # A transfer unit asks for every image of its sets: a copy would double its feature memory.
    cache, samples = _cache(tmp_path, "float32"), _samples()
    cache.ensure("normal", "r8", CountingEncoder(), samples)
    ids = [s["image"] for s in samples]
    assert np.shares_memory(cache.load("normal", "r8", ids), cache.load("normal", "r8", ids))
    assert not np.shares_memory(cache.load("normal", "r8", ids[::-1]),
                                cache.load("normal", "r8", ids))


def test_a_crash_while_encoding_leaves_no_entry(tmp_path):
    cache, samples = _cache(tmp_path), _samples()
    with pytest.raises(RuntimeError, match="crashed"):
        cache.ensure("normal", "r8", CountingEncoder(fail_after=4), samples, batch_size=4)
    assert not cache.is_cached("normal", "r8")
    assert cache.storage.list("features/normal") == []
    with pytest.raises(StorageError, match="run the feature cache step"):
        cache.load("normal", "r8", [s["image"] for s in samples])


def test_keys_change_with_encoder_weights_image_set_and_dtype(tmp_path):
    a = features.keyed_paths({"normal": "w1"})("normal", "r8")
    assert a == features.keyed_paths({"normal": "w1"})("normal", "r8")
    assert a != features.keyed_paths({"normal": "w2"})("normal", "r8")
    assert a != features.keyed_paths({"normal": "w1"})("normal", "test")
    assert a != features.keyed_paths({"normal": "w1"}, "float16")("normal", "r8")


def test_multi_view_samples_encode_each_view(tmp_path):
    cache, samples = _cache(tmp_path), _samples(6, views=3)
    enc = CountingEncoder()
    cache.ensure("random", "r6-egomotion", enc, samples, batch_size=4)
    got = cache.load("random", "r6-egomotion", [s["image"] for s in samples])
    assert got.shape == (6, 3, 8, 1, 1) and enc.seen == 18
    with torch.no_grad():  # sample i's view v is the encoding of that view's image alone
        for i, v in [(0, 0), (0, 2), (4, 1), (5, 2)]:
            want = enc.proj(samples[i]["rgb"][v:v + 1])[0].numpy()
            np.testing.assert_allclose(got[i, v].astype(np.float32), want, atol=2e-3, rtol=2e-3)


def test_corrupt_entries_and_foreign_images_are_reported(tmp_path):
    cache, samples = _cache(tmp_path), _samples()
    rel = cache.ensure("normal", "r8", CountingEncoder(), samples)
    with pytest.raises(StorageError, match="another image set"):
        cache.load("normal", "r8", ["b9/point_0_view_0"])
    cache.storage.write_bytes(rel, b"not an npz")
    with pytest.raises(StorageError, match="delete it"):
        _cache(tmp_path).load("normal", "r8", [s["image"] for s in samples])


def test_image_set_names_round_trip():
    assert features.imageset_name("normal", 128) == "r128"
    assert features.imageset_name("normal", None) == "test"
    assert features.imageset_name("egomotion", 128) == "r128-egomotion"
    assert features.parse_imageset("test-egomotion") == (None, "egomotion")
    assert features.parse_imageset("r512") == (512, None)
    assert features.imagesets(["normal", "egomotion"], [128]) == [
        "test", "test-egomotion", "r128", "r128-egomotion"]


def test_bad_cache_settings_and_names_are_refused_naming_the_choices(tmp_path):
    with pytest.raises(ConfigError, match=r"feature dtype 'float8': choose one of \['float16'"):
        features.keyed_paths({"normal": "w1"}, "float8")
    with pytest.raises(ConfigError, match=r"feature dtype 'int8': choose one of"):
        features.FeatureCache(Storage(str(tmp_path)), features.keyed_paths({}), "int8")
    with pytest.raises(ConfigError, match=r"no encoder key for source 'reshading'; known: \['n"):
        features.keyed_paths({"normal": "w1"})("reshading", "r8")
    for bad in ("r0", "train", "r12x"):
        with pytest.raises(ConfigError, match=f"image set '{bad}': expected `test` or `r<images>"):
            features.parse_imageset(bad)
    with pytest.raises(ConfigError, match="'r8-egomotion' holds samples of egomotion only"):
        features.open_imageset(str(tmp_path), "r8-egomotion", image_size=32, tasks=["normal"])
    with pytest.raises(ConfigError, match="source 'normal' needs its gold checkpoint; train it"):
        features.encoder_loader("normal", None, model=None)()


def test_loader_processes_read_ahead_and_encode_the_same_representations():
    enc, samples = CountingEncoder(), _samples(10, views=2)
    here = features.encode_samples(enc, samples, batch_size=4)
    ahead = features.encode_samples(enc, samples, batch_size=4, num_workers=1)
    assert ahead.images == here.images == [s["image"] for s in samples]
    assert ahead.array.shape == (10, 2, 8, 1, 1)
    np.testing.assert_array_equal(ahead.array, here.array)


def test_colorization_encodes_the_lightness_it_was_trained_on_and_the_others_rgb(tmp_path):
    # Its network only ever saw grey (L/100) images; shown colour, its representation would be
    # of inputs it never saw (Taskonomy's extraction also gave it lightness).
    from taskonomy_ray.derived import colorize

    keys = {"colorization": "gold-colorization-abc", "normal": "gold-normal-abc"}
    cache = features.FeatureCache(Storage(str(tmp_path)), features.keyed_paths(keys), "float32")
    enc, samples = CountingEncoder(), _samples(6, views=2)  # multi-view sets too
    ids = [s["image"] for s in samples]
    cache.ensure("colorization", "r8", enc, samples, batch_size=4)
    cache.ensure("normal", "r8", enc, samples, batch_size=4)
    grey = [{"image": s["image"], "rgb": torch.stack([torch.from_numpy(colorize(
        v.permute(1, 2, 0).numpy())[0]) for v in s["rgb"]])} for s in samples]
    expect = features.encode_samples(enc, grey, batch_size=4).array
    np.testing.assert_allclose(cache.load("colorization", "r8", ids), expect, atol=1e-6)
    np.testing.assert_array_equal(cache.load("normal", "r8", ids),
                                  features.encode_samples(enc, samples, batch_size=4).array)


@pytest.mark.parametrize("source", ["denoising", "inpainting"])
def test_denoising_and_inpainting_encode_the_corrupted_images_they_were_trained_on(
        tmp_path, source):
    # As in Taskonomy's extraction: the denoiser is shown noisy images (one seeded draw per
    # image, the same on every run), the inpainter images with their centre hidden.
    from taskonomy_ray.derived import NOISE_STD, centre_masked, noisy
    from taskonomy_ray.samples import image_seed

    keys = {source: f"gold-{source}-abc"}
    enc, samples = CountingEncoder(), _samples(6)
    ids = [s["image"] for s in samples]
    got = []
    for run in ("a", "b"):
        cache = features.FeatureCache(Storage(str(tmp_path / run)), features.keyed_paths(keys),
                                      "float32")
        cache.ensure(source, "r8", enc, samples, batch_size=4)
        got.append(cache.load(source, "r8", ids))
    np.testing.assert_array_equal(got[0], got[1])
    shown = [noisy(s["rgb"], image_seed(s["image"], 0)) if source == "denoising"
             else centre_masked(s["rgb"]) for s in samples]
    expect = features.encode_samples(enc, [{"image": s["image"], "rgb": x}
                                           for s, x in zip(samples, shown)], batch_size=4).array
    np.testing.assert_allclose(got[0], expect, atol=1e-6)
    clean = features.encode_samples(enc, samples, batch_size=4).array
    assert not np.allclose(got[0], clean, atol=1e-3)
    if source == "denoising":  # each image its own draw of the training noise
        d = shown[0] - samples[0]["rgb"]
        assert 0.5 * NOISE_STD < float(d.std()) < 1.5 * NOISE_STD
        assert not torch.allclose(shown[0] - samples[0]["rgb"], shown[1] - samples[1]["rgb"])


def test_non_finite_representations_are_refused_and_nothing_is_cached(tmp_path):
    class Diverged(CountingEncoder):
        def forward(self, x):
            z = super().forward(x)
            z[1] = float("nan")  # one image's representation
            return z

    cache, samples = _cache(tmp_path), _samples()
    with pytest.raises(TrainingError, match=r"not finite on 1 of \d+ images .*nothing was cached"):
        cache.ensure("normal", "r8", Diverged(), samples)
    assert cache.storage.list("features") == []
