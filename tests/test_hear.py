"""HEAR 2021 semantics: sizes, dtypes, timestamps, batch vs single, windowed vs single pass, bad input."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from conftest import reference

from hear_dymn import EmbeddingConfig, HearModel, create_model, get_scene_embeddings, get_timestamp_embeddings
from hear_dymn import load_model
from hear_dymn.models.random_weights import save_random_checkpoint, synthetic_waveform
from hear_dymn.models.weights import sha256_of


def noise(n_sounds: int, seconds: float, seed: int = 0) -> torch.Tensor:
    """Test sounds the random-weight fixture model handles in range (white noise drives it to 1e14)."""
    return torch.stack([synthetic_waveform(seed + i, seconds) for i in range(n_sounds)])


def test_model_attributes(hear_model: HearModel) -> None:
    assert hear_model.sample_rate == 32000
    assert isinstance(hear_model.scene_embedding_size, int)
    assert isinstance(hear_model.timestamp_embedding_size, int)
    # dymn04: blocks 5, 11, 13, 15 (16 + 48 + 64 + 64) + final map 384 + 128 mel bands
    assert hear_model.scene_embedding_size == 16 + 48 + 64 + 64 + 384 + 128
    assert not hear_model.training
    hear_model.train()
    assert not hear_model.network.training


@pytest.mark.parametrize(("arch", "size"), [("dymn10", 1560), ("dymn20", 2992), ("mn10", 1560)])
def test_documented_sizes(arch: str, size: int) -> None:
    with torch.device("meta"):
        network = create_model(arch)
    assert HearModel(network).scene_embedding_size == size
    assert HearModel(network, EmbeddingConfig(layers=(5, 11, 13, 15))).scene_embedding_size == size - (
        network.num_features)


def test_scene_embedding_is_pooled_reference_features(hear_model: HearModel) -> None:
    """Scene embedding = pooled EfficientAT feature maps 5, 11, 13, 15, 16 + mel band means."""
    ref = reference("dymn04_reference_3p7s.npz")
    emb = get_scene_embeddings(torch.from_numpy(ref["wave"]), hear_model)
    assert emb.dtype == torch.float32 and emb.shape == (1, hear_model.scene_embedding_size)
    expected = np.concatenate([ref[f"f64_pooled_{i:02d}"] for i in (5, 11, 13, 15, 16)]
                              + [ref["mel"].mean(-1)], axis=1)
    err = np.abs(emb.numpy() - expected) / np.abs(expected).max(axis=1, keepdims=True)
    assert err.max() < 2e-3


def test_timestamps_evenly_spaced_inside_clip(hear_model: HearModel) -> None:
    audio = noise(2, 1.07)
    emb, ts = get_timestamp_embeddings(audio, hear_model)
    assert emb.dtype == torch.float32 and ts.dtype == torch.float32
    assert emb.shape == (2, ts.shape[1], hear_model.timestamp_embedding_size)
    diffs = np.diff(ts.numpy(), axis=1)
    np.testing.assert_allclose(diffs, 50.0)
    assert ts[0, 0] == 0 and ts.max() <= 1070 and ts.max() > 1070 - 50


def test_timestamp_mean_approximates_scene(hear_model: HearModel) -> None:
    audio = noise(1, 3.0)
    scene = get_scene_embeddings(audio, hear_model)
    stamps, _ = get_timestamp_embeddings(audio, hear_model)
    cos = torch.nn.functional.cosine_similarity(stamps.mean(1), scene).item()
    assert cos > 0.99


def frame_weights(model: HearModel, seconds: float, monkeypatch) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per embedding part, the weights of every network frame (all windows) in the scene embedding and in the mean
    of the timestamp embeddings: the network's frames are replaced by one-hot indicators, so both embeddings
    return the weights themselves (the aggregation code runs unchanged)."""
    audio = torch.zeros(1, int(round(seconds * model.sample_rate)))
    real = model.frame_features
    n_windows = len(model._window_starts(model._pad_short(audio).shape[1]))

    def one_hot(batch: torch.Tensor) -> list[tuple[torch.Tensor, int]]:
        parts = []
        for feats, step in real(batch):
            n = feats.shape[2]
            eye = torch.zeros(batch.shape[0], n_windows * n, n)
            for k in range(batch.shape[0]):  # batch row = window index (one sound, all windows in one call)
                eye[k, k * n:(k + 1) * n] = torch.eye(n)
            parts.append((eye, step))
        return parts

    window = audio[:, :int(round(model.cfg.window_seconds * model.sample_rate))]
    sizes = [n_windows * feats.shape[2] for feats, _ in real(model._pad_short(window))]
    monkeypatch.setattr(model, "frame_features", one_hot)
    monkeypatch.setattr(model, "scene_embedding_size", sum(sizes))
    scene = get_scene_embeddings(audio, model)[0].double()
    stamps = get_timestamp_embeddings(audio, model)[0][0].double().mean(0)
    monkeypatch.undo()
    return list(scene.split(sizes)), list(stamps.split(sizes))


def weighting_distance(model: HearModel, seconds: float, monkeypatch) -> list[float]:
    """Per part, the total-variation distance between the two weightings of the frames (see the README)."""
    scene, stamps = frame_weights(model, seconds, monkeypatch)
    for u, w in zip(scene, stamps):  # both are averages: weights sum to one
        assert abs(float(u.sum()) - 1) < 1e-5 and abs(float(w.sum()) - 1) < 1e-5
    return [0.5 * float((w - u).abs().sum()) for u, w in zip(scene, stamps)]


# README (HEAR module, "Timestamp mean vs scene embedding"): the largest distance for clips of at least this length
STATED_DISTANCE = {1.0: 0.14, 2.0: 0.085, 5.0: 0.05, 10.0: 0.04}


@pytest.mark.parametrize("seconds", [1.0, 1.29, 2.25, 5.0, 5.13, 10.0, 11.04, 25.0])
def test_timestamp_mean_weighting_within_stated_distance(dymn04_checkpoint, seconds: float, monkeypatch) -> None:
    # 1.29, 2.25, 5.13 and 11.04 s are where the README's grid search found the largest distance of each range
    model = load_model(str(dymn04_checkpoint))
    distance = weighting_distance(model, seconds, monkeypatch)
    bound = STATED_DISTANCE[max(length for length in STATED_DISTANCE if length <= seconds)]
    assert max(distance) <= bound
    assert max(distance) > 0  # not exact: frames are weighted unevenly (README)


def test_single_frame_maps_agree_exactly(dymn04_checkpoint, monkeypatch) -> None:
    # 0.2 s: maps 13, 15, 16 have one frame, so every timestamp is that frame and the mean equals the scene
    distance = weighting_distance(load_model(str(dymn04_checkpoint)), 0.2, monkeypatch)
    assert distance[2:5] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("seconds", [1.0, 5.0, 25.0])
def test_timestamp_mean_within_bound_of_scene(dymn04_checkpoint, seconds: float, monkeypatch) -> None:
    """Per channel, |mean of timestamp embeddings - scene embedding| <= distance x (max - min over the frames)."""
    model = load_model(str(dymn04_checkpoint))
    distance = weighting_distance(model, seconds, monkeypatch)
    audio = noise(1, seconds)
    scene = get_scene_embeddings(audio, model)[0]
    stamps = get_timestamp_embeddings(audio, model)[0][0].mean(0)
    window = min(audio.shape[1], int(round(model.cfg.window_seconds * model.sample_rate)))
    windows = torch.cat([audio[:, s:s + window] for s in model._window_starts(audio.shape[1])])
    spread, scale = [], []
    for (feats, _), d in zip(model.frame_features(windows), distance):
        spread.append(d * (feats.amax(dim=(0, 2)) - feats.amin(dim=(0, 2))))
        scale.append(feats.abs().amax(dim=(0, 2)))
    bound = torch.cat(spread) + 1e-5 * torch.cat(scale) + 1e-6  # float32 rounding of both averages
    assert ((stamps - scene).abs() <= bound).all()


def test_batch_equals_single_clips(hear_model: HearModel) -> None:
    audio = noise(3, 1.5)
    singles = torch.cat([get_scene_embeddings(a[None], hear_model) for a in audio])
    torch.testing.assert_close(get_scene_embeddings(audio, hear_model), singles, rtol=1e-4, atol=1e-5)
    stamps, _ = get_timestamp_embeddings(audio, hear_model)
    single_stamps = torch.cat([get_timestamp_embeddings(a[None], hear_model)[0] for a in audio])
    torch.testing.assert_close(stamps, single_stamps, rtol=1e-4, atol=1e-5)


def test_long_audio_chunked_equals_unchunked(dymn04_checkpoint) -> None:
    """Windows processed one per call or all at once give identical results."""
    options = dict(window_seconds=1.0, window_hop_seconds=0.75)
    one = load_model(str(dymn04_checkpoint), max_batch_windows=1, **options)
    many = load_model(str(dymn04_checkpoint), max_batch_windows=64, **options)
    audio = noise(2, 5.3)
    s1, s2 = get_scene_embeddings(audio, one), get_scene_embeddings(audio, many)
    torch.testing.assert_close(s1, s2, rtol=1e-4, atol=1e-5)
    (e1, t1), (e2, t2) = get_timestamp_embeddings(audio, one), get_timestamp_embeddings(audio, many)
    torch.testing.assert_close(e1, e2, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(t1, t2)
    assert t1.shape[1] == int(5300 / 50) + 1


def test_window_seams_are_consistent(dymn04_checkpoint) -> None:
    """Within a window's owned span, the timestamp embedding equals that of a single pass over the window."""
    model = load_model(str(dymn04_checkpoint), window_seconds=2.0, window_hop_seconds=1.5)
    audio = noise(1, 4.0)
    stamps, times = get_timestamp_embeddings(audio, model)
    first_window, _ = get_timestamp_embeddings(audio[:, :64000], model)
    # window 0 covers [0, 2 s) and owns timestamps nearer its centre (1 s) than window 1's (2.5 s): t < 1.75 s
    owned = times[0] < 1750
    torch.testing.assert_close(stamps[0, owned], first_window[0, owned[: first_window.shape[1]]],
                               rtol=1e-4, atol=1e-5)


def test_short_audio_is_padded(hear_model: HearModel) -> None:
    emb = get_scene_embeddings(noise(2, 0.005), hear_model)  # 160 samples, shorter than one STFT window
    assert emb.shape == (2, hear_model.scene_embedding_size) and torch.isfinite(emb).all()
    stamps, ts = get_timestamp_embeddings(noise(1, 0.005), hear_model)
    assert ts.tolist() == [[0.0]] and stamps.shape == (1, 1, hear_model.timestamp_embedding_size)
    # padding is zeros at the end, up to the frontend's minimum (min_seconds = 32 ms = 1024 samples)
    short = noise(2, 0.005)
    padded = torch.nn.functional.pad(short, (0, 1024 - short.shape[1]))
    torch.testing.assert_close(get_scene_embeddings(short, hear_model), get_scene_embeddings(padded, hear_model))


@pytest.mark.parametrize("click_s", [1.23, 13.37, 29.5])
def test_timestamps_line_up_with_the_audio(dymn04_checkpoint, click_s: float) -> None:
    # A click in silence: the mel-band means peak at the timestamp nearest the click, across window seams
    # (10 s windows, 7.5 s hop) and at the end of the clip.
    model = load_model(str(dymn04_checkpoint), layers=[], mel_means=True)
    audio = torch.zeros(1, 30 * 32000)
    start = int(click_s * 32000)
    audio[0, start : start + 64] = torch.hann_window(64)
    emb, ts = get_timestamp_embeddings(audio, model)
    peak = float(ts[0, emb[0].mean(dim=1).argmax()]) / 1000
    assert abs(peak - click_s) <= 0.025 + 1e-6  # timestamps every 50 ms


@pytest.mark.parametrize(("audio", "error", "match"), [
    (torch.zeros(32000), ValueError, r"\(n_sounds, n_samples\).*audio\[None\]"),
    (torch.zeros(1, 1, 32000), ValueError, r"\(n_sounds, n_samples\)"),
    (torch.zeros(1, 32000, dtype=torch.float64), TypeError, r"float64.*audio.float\(\)"),
    (torch.zeros(1, 32000, dtype=torch.int16), TypeError, r"int16.*32768"),
    (torch.full((1, 32000), float("nan")), ValueError, "NaN"),
    (torch.full((1, 32000), float("inf")), ValueError, "infinite"),
    (torch.tensor([[0.5, float("inf"), float("-inf"), 0.1] * 300]), ValueError, "NaN or infinite"),
    (torch.cat([torch.zeros(1, 4000), torch.tensor([[float("nan")]])], dim=1), ValueError, "NaN"),
    (torch.zeros(1, 0), ValueError, "empty"),
    (torch.zeros(0, 100), ValueError, "empty"),
])
def test_bad_input_is_named(hear_model: HearModel, audio, error, match) -> None:
    with pytest.raises(error, match=match):
        get_scene_embeddings(audio, hear_model)
    with pytest.raises(error, match=match):
        get_timestamp_embeddings(audio, hear_model)


def test_numpy_input_equals_tensor_input(hear_model: HearModel) -> None:
    audio = noise(2, 0.6)
    scene = get_scene_embeddings(audio, hear_model)
    from_numpy = get_scene_embeddings(audio.numpy(), hear_model)
    assert isinstance(from_numpy, torch.Tensor)
    torch.testing.assert_close(from_numpy, scene, rtol=0, atol=0)
    stamps, ts = get_timestamp_embeddings(audio.numpy(), hear_model)
    assert isinstance(stamps, torch.Tensor) and isinstance(ts, torch.Tensor)
    torch.testing.assert_close(stamps, get_timestamp_embeddings(audio, hear_model)[0], rtol=0, atol=0)
    # read-only and reversed (negative-stride) arrays are copied rather than refused
    frozen = audio.numpy().copy()
    frozen.flags.writeable = False
    torch.testing.assert_close(get_scene_embeddings(frozen, hear_model), scene, rtol=0, atol=0)
    reversed_audio = audio.flip(1)
    torch.testing.assert_close(get_scene_embeddings(audio.numpy()[:, ::-1], hear_model),
                               get_scene_embeddings(reversed_audio, hear_model), rtol=0, atol=0)


@pytest.mark.parametrize(("audio", "error", "match"), [
    ([[0.0] * 32000], TypeError, r"torch\.Tensor or numpy\.ndarray .*float32 at 32000 Hz, got list$"),
    ((0.0,) * 32000, TypeError, r"torch\.Tensor or numpy\.ndarray .*got tuple$"),
    (np.float32(0.5), TypeError, r"torch\.Tensor or numpy\.ndarray .*got numpy\.float32$"),
    (np.zeros(32000, dtype=np.float32), ValueError, r"\(n_sounds, n_samples\).*audio\[None\]"),
    (np.zeros((1, 32000)), TypeError, r"float32 at 32000 Hz, got float64: convert it with audio\.astype\(np\.float32\)"),
    (np.zeros((1, 32000), dtype=np.int16), TypeError, r"got int16.*audio\.astype\(np\.float32\) / 32768"),
    (torch.zeros(1, 32000, dtype=torch.float16), TypeError, r"got torch\.float16: convert it with audio\.float\(\)"),
    (np.full((1, 4000), np.nan, dtype=np.float32), ValueError, "NaN"),
    (np.zeros((1, 0), dtype=np.float32), ValueError, "empty"),
])
def test_input_rule_is_stated(hear_model: HearModel, audio, error, match) -> None:
    """One rule for both entry points: a torch.Tensor or numpy.ndarray, (n_sounds, n_samples), float32."""
    with pytest.raises(error, match=match):
        get_scene_embeddings(audio, hear_model)
    with pytest.raises(error, match=match):
        get_timestamp_embeddings(audio, hear_model)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reduced_precision_warns_on_cpu(dymn04_checkpoint, precision: str) -> None:
    model = load_model(str(dymn04_checkpoint), precision=precision)
    audio = noise(1, 0.5)
    with pytest.warns(UserWarning, match=rf"precision='{precision}' has no effect on CPU.*runs in float32") as seen:
        scene = get_scene_embeddings(audio, model)
    assert len(seen) == 1 and seen[0].filename == __file__  # points at the caller's line
    # it really runs in float32: the same numbers as an fp32 model
    torch.testing.assert_close(scene, get_scene_embeddings(audio, load_model(str(dymn04_checkpoint))), rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per model
        get_timestamp_embeddings(audio, model)
        get_scene_embeddings(audio, model)
    fresh = load_model(str(dymn04_checkpoint), precision=precision)
    with pytest.warns(UserWarning, match=f"precision='{precision}'"):
        get_timestamp_embeddings(audio, fresh)


def test_fp32_does_not_warn(dymn04_checkpoint) -> None:
    model = load_model(str(dymn04_checkpoint), precision="fp32")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        get_scene_embeddings(noise(1, 0.3), model)
        get_timestamp_embeddings(noise(1, 0.3), model)


def test_repr_is_short_and_names_the_recipe(dymn04_checkpoint) -> None:
    model = load_model(str(dymn04_checkpoint))
    text = repr(model)
    assert "\n" not in text and len(text) < 250 and str(model) == text
    for fact in ("HearModel(dymn04", f"weights=dymn04_random_weights.pt sha256:{sha256_of(dymn04_checkpoint)[:12]}",
                 "layers=[5, 11, 13, 15, 16] + mel_means -> 704", "sample_rate=32000", "timestamp_hop_ms=50,",
                 "precision=fp32,", "device=cpu", "fast=True"):
        assert fact in text
    # the module tree is still there for whoever asks for it
    assert "DynamicInvertedResidual" in repr(model.network) and "FusedMobileNet" in repr(model.fused)
    assert "HearModel(dymn04" in repr(torch.nn.ModuleList([model]))
    other = load_model(str(dymn04_checkpoint), layers=[16], mel_means=False, timestamp_hop_ms=25, precision="bf16",
                       fast=False)
    assert "layers=[16] -> 384" in repr(other) and "timestamp_hop_ms=25," in repr(other)
    assert "precision=bf16 (inactive: float32)" in repr(other) and "fast=False" in repr(other)
    with torch.device("meta"):
        network = create_model("mn10")
    assert "weights=random init," in repr(HearModel(network, EmbeddingConfig(fast=False)))


def test_options(dymn04_checkpoint) -> None:
    model = load_model(str(dymn04_checkpoint), layers=[16], mel_means=False, timestamp_hop_ms=25)
    assert model.scene_embedding_size == 384
    _, ts = get_timestamp_embeddings(noise(1, 0.5), model)
    assert ts.shape[1] == 21
    with pytest.raises(TypeError, match="unknown load_model option"):
        load_model(str(dymn04_checkpoint), hop=25)
    with pytest.raises(ValueError, match="out of range"):
        load_model(str(dymn04_checkpoint), layers=[20])
    with pytest.raises(ValueError, match="empty"):
        load_model(str(dymn04_checkpoint), layers=[], mel_means=False)
    # a string or a bare int is a list-of-ints mistake, not layers "1" and "6"
    for layers in ("16", 16, [5.0]):
        with pytest.raises(ValueError, match="layers must be a list of feature-map indices"):
            load_model(str(dymn04_checkpoint), layers=layers)
    with pytest.raises(ValueError, match=r"window_seconds=0.01 is 320 samples at 32000 Hz; the log-mel needs"):
        load_model(str(dymn04_checkpoint), window_seconds=0.01, window_hop_seconds=0.01)
    with pytest.raises(ValueError, match="window_hop_seconds=1e-05 is less than one sample"):
        load_model(str(dymn04_checkpoint), window_hop_seconds=1e-5)


def test_architecture_read_from_file_or_given(tmp_path) -> None:
    path = save_random_checkpoint("mn04", tmp_path / "x.pt")
    assert load_model(str(path)).network.arch == "mn04"
    assert load_model(str(path), model_name="mn04_as").network.arch == "mn04"
    with pytest.raises(Exception, match="does not fit architecture 'dymn04'"):
        load_model(str(path), model_name="dymn04")


def test_empty_path_uses_default_weights_or_fails_clearly(offline) -> None:
    with pytest.raises(Exception, match=r"(?s)dymn10_as.*checkpoint_path"):
        load_model("")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(dymn04_checkpoint) -> None:
    cpu = load_model(str(dymn04_checkpoint))
    gpu = load_model(str(dymn04_checkpoint)).to("cuda")
    audio = noise(2, 2.0)
    ref = get_scene_embeddings(audio, cpu)
    out = get_scene_embeddings(audio.cuda(), gpu)
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), ref, rtol=2e-3, atol=2e-3)
