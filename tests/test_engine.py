"""Engine: bundle loading and verification, backend choice and fallback, numerical agreement with torch eager."""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.backends import AUTO_ORDER, BackendUnavailable
from engine.backends.ort_backend import default_threads, session_options
from engine.backends.trt_backend import TensorRTBackend, cache_dir, plan_key, timing_cache_name
from engine.bundle import FORMAT_VERSION, BundleError, load_bundle, upgrade_manifest
from engine.errors import UserError
from engine.generator import BackendError, EngineInputError, Generator, candidates, to_uint8

torch.set_num_threads(1)

HAS_CUDA = torch.cuda.is_available()
CPU_BACKENDS = ["onnxruntime-cpu", "torch-cpu"]


def _available(name: str) -> bool:
    if name.endswith("-cpu"):
        return True
    if name == "torch-cuda":
        return HAS_CUDA
    if name == "onnxruntime-cuda":
        import onnxruntime as ort

        return "CUDAExecutionProvider" in ort.get_available_providers()
    try:
        import tensorrt  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return HAS_CUDA


def _inputs(cfg, batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    audio = np.clip(0.3 * rng.standard_normal((batch, cfg.audio.window_samples)), -1, 1).astype(np.float32)
    noise = rng.standard_normal((batch, cfg.model.noise_dim)).astype(np.float32)
    return audio, noise


@pytest.fixture(scope="module")
def eager(tiny_model):
    return tiny_model.eager()


@pytest.fixture(scope="module")
def ort_gen(tiny_bundle: Path):
    gen = Generator(tiny_bundle, backend="onnxruntime-cpu", max_batch=4, warmup=False)
    yield gen
    gen.close()


# -- agreement with torch eager -------------------------------------------------------------------


@pytest.mark.parametrize("backend", AUTO_ORDER)
def test_backend_matches_torch_eager(backend: str, tiny_bundle: Path, tiny_model, eager) -> None:
    if not _available(backend):
        pytest.skip(f"{backend} not available here")
    gen = Generator(tiny_bundle, backend=backend, max_batch=8, fallback=False)
    try:
        assert gen.backend_name == backend
        fp16 = backend == "tensorrt" and getattr(gen._backend, "fp16", False)
        tol = 2e-2 if fp16 else 1e-3
        for batch in (1, 5):
            audio, noise = _inputs(tiny_model.cfg, batch, seed=batch)
            with torch.inference_mode():
                expected = eager(torch.from_numpy(audio), torch.from_numpy(noise)).numpy()
            got = gen.run(audio=audio, noise=noise)["image"]
            assert got.shape == (batch, 3, 64, 64) and got.dtype == np.float32
            assert np.abs(got - expected).max() <= tol, backend
    finally:
        gen.close()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_batch1_equals_batchN_and_splitting(backend: str, tiny_bundle: Path, tiny_model) -> None:
    gen = Generator(tiny_bundle, backend=backend, max_batch=2, warmup=False)
    audio, noise = _inputs(tiny_model.cfg, 5, seed=7)
    whole = gen.run(audio=audio, noise=noise)["image"]  # 5 > max_batch=2: split into 2 + 2 + 1
    singles = np.concatenate([gen.run(audio=audio[i : i + 1], noise=noise[i : i + 1])["image"] for i in range(5)])
    assert whole.shape == (5, 3, 64, 64)
    assert np.abs(whole - singles).max() <= 1e-5
    gen.close()


def test_uint8_output_and_seeded_noise(ort_gen: Generator, tiny_model) -> None:
    audio, noise = _inputs(tiny_model.cfg, 3)
    images = ort_gen(audio, noise)
    assert images.shape == (3, 64, 64, 3) and images.dtype == np.uint8 and images.flags.c_contiguous
    np.testing.assert_array_equal(images, to_uint8(ort_gen.run(audio=audio, noise=noise)["image"]))
    np.testing.assert_array_equal(ort_gen(audio, seed=5), ort_gen(audio, seed=5))
    # noise left out is filled from the seed, as make_noise draws it
    np.testing.assert_array_equal(ort_gen(audio, seed=5), ort_gen(audio, ort_gen.make_noise(3, 5)))
    np.testing.assert_array_equal(ort_gen.generate(seed=5, audio=audio)["image"], ort_gen(audio, seed=5))
    assert not np.array_equal(ort_gen.make_noise(3, 1), ort_gen.make_noise(3, 2))
    assert ort_gen.make_noise(2, 0).dtype == np.float32 and ort_gen.make_noise(2, 0).shape == (2, 16)
    assert ort_gen.run(audio=audio[:0], noise=noise[:0])["image"].shape == (0, 3, 64, 64)


def test_to_uint8_rounding_and_clipping() -> None:
    x = np.array([-1.5, -1.0, 0.0, 0.5, 1.0, 2.0], dtype=np.float32).reshape(1, 1, 2, 3).repeat(3, axis=1)
    out = to_uint8(x)
    assert out.shape == (1, 2, 3, 3)
    np.testing.assert_array_equal(out[0, :, :, 0].ravel(), [0, 0, 128, 191, 255, 255])


def test_input_validation_messages(ort_gen: Generator, tiny_model) -> None:
    audio, noise = _inputs(tiny_model.cfg, 2)
    with pytest.raises(EngineInputError, match=r"window_samples=16000"):
        ort_gen.run(audio=audio[:, :8000], noise=noise)
    with pytest.raises(EngineInputError, match=r"audio\[None\]"):
        ort_gen.run(audio=audio[0], noise=noise)
    with pytest.raises(EngineInputError, match="int16"):
        ort_gen((audio * 32767).astype(np.int16))
    with pytest.raises(EngineInputError, match=r"noise must have shape \[2, 16\]"):
        ort_gen.run(audio=audio, noise=noise[:1])
    with pytest.raises(EngineInputError, match=r"unknown input\(s\) \['class'\]; this bundle takes \['audio', 'noise'\]"):
        ort_gen.run(audio=audio, **{"class": noise})
    with pytest.raises(EngineInputError, match="input 'audio' is required"):
        ort_gen.run(noise=noise)
    with pytest.raises(UserError):  # run.py turns these into one-line errors
        ort_gen.run(audio=audio[:, :100], noise=noise)
    # float64 input is accepted and converted
    assert ort_gen.run(audio=audio.astype(np.float64), noise=noise)["image"].dtype == np.float32


# -- backend choice -------------------------------------------------------------------------------


@pytest.mark.skipif(HAS_CUDA, reason="a CUDA machine picks a GPU backend")
def test_auto_picks_onnxruntime_cpu_and_says_why(tiny_bundle: Path) -> None:
    gen = Generator(tiny_bundle, warmup=False)
    assert gen.backend_name == "onnxruntime-cpu"
    reason = gen.backend_reason
    assert reason.startswith("tensorrt: ") and reason.endswith("chose onnxruntime-cpu")
    assert "onnxruntime-cuda: no CUDA provider" in reason and "torch-cuda: no CUDA device" in reason
    assert (gen.sample_rate, gen.window_samples, gen.noise_dim, gen.image_size) == (16000, 16000, 16, 64)
    gen.close()


def test_tensorrt_import_failure_falls_back(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ModuleNotFoundError
    gen = Generator(tiny_bundle, backend="tensorrt", warmup=False)
    assert gen.backend_name != "tensorrt"
    assert gen.backend_reason.startswith("tensorrt: not installed")
    gen.close()
    with pytest.raises(BackendError, match="tensorrt: not installed"):
        Generator(tiny_bundle, backend="tensorrt", fallback=False, warmup=False)


def test_tensorrt_broken_install_falls_back(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken(types.ModuleType):
        def __getattr__(self, name: str):
            raise OSError("libnvinfer.so.10: cannot open shared object file")

    monkeypatch.setitem(sys.modules, "tensorrt", Broken("tensorrt"))
    if not HAS_CUDA:
        with pytest.raises(BackendUnavailable, match="no CUDA device"):
            TensorRTBackend(load_bundle(tiny_bundle), max_batch=2)
    gen = Generator(tiny_bundle, backend="tensorrt", warmup=False)
    assert gen.backend_name != "tensorrt" and gen.backend_reason.startswith("tensorrt: ")
    gen.close()


def test_candidates() -> None:
    assert candidates("auto", None) == list(AUTO_ORDER)
    assert candidates("auto", "cpu") == ["onnxruntime-cpu", "torch-cpu"]
    assert candidates("auto", "cuda:1") == ["tensorrt", "onnxruntime-cuda", "torch-cuda"]
    assert candidates("tensorrt", None)[0] == "tensorrt" and len(candidates("tensorrt", None)) == len(AUTO_ORDER)
    assert candidates("onnxruntime", None) == ["onnxruntime-cuda", "onnxruntime-cpu"]
    assert candidates("torch", "cpu") == ["torch-cpu"]
    assert candidates("torch", None, fallback=False) == ["torch-cuda"]
    assert candidates("onnxruntime-cpu", None) == ["onnxruntime-cpu"]
    for bad in (("tensorrt", "cpu"), ("onnxruntime-cpu", "cuda"), ("tflite", None), ("auto", "gpu")):
        with pytest.raises(BackendError):
            candidates(*bad)


@pytest.mark.skipif(HAS_CUDA, reason="needs a machine without CUDA")
def test_explicit_cuda_on_cpu_machine_says_why(tiny_bundle: Path) -> None:
    with pytest.raises(BackendError, match="torch-cuda: no CUDA device"):
        Generator(tiny_bundle, backend="torch", device="cuda", warmup=False)


def test_torch_backend_explicit_cpu(tiny_bundle: Path) -> None:
    gen = Generator(tiny_bundle, backend="torch", device="cpu", max_batch=2)
    assert gen.backend_name == "torch-cpu" and "requested torch on cpu" in gen.backend_reason
    gen.close()


def test_ort_session_options() -> None:
    so = session_options()
    assert so.intra_op_num_threads == default_threads() <= 2
    assert so.inter_op_num_threads == 1
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert so.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    import onnxruntime as ort

    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert session_options(threads=1).intra_op_num_threads == 1
    with pytest.raises(RuntimeError):  # never set: the workers never spin at all
        so.get_session_config_entry("session.force_spinning_stop")
    in_call = session_options(spin="in-call")
    assert in_call.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert in_call.get_session_config_entry("session.force_spinning_stop") == "1"
    assert in_call.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    with pytest.raises(ValueError, match="spin"):
        session_options(spin="off")


def test_spin_in_call_agrees_and_bad_mode_is_refused(tiny_bundle: Path, tiny_model) -> None:
    audio, noise = _inputs(tiny_model.cfg, 2, seed=3)
    never = Generator(tiny_bundle, backend="onnxruntime-cpu", warmup=False)
    in_call = Generator(tiny_bundle, backend="onnxruntime-cpu", warmup=False, ort_spin="in-call")
    assert never._backend.spin == "never" and in_call._backend.spin == "in-call"
    assert np.array_equal(never.run(audio=audio, noise=noise)["image"], in_call.run(audio=audio, noise=noise)["image"])
    with pytest.raises(ValueError, match="ort_spin must be one of never, in-call"):
        Generator(tiny_bundle, backend="onnxruntime-cpu", warmup=False, ort_spin="off")


# -- TensorRT plan cache key ----------------------------------------------------------------------


def test_plan_key_changes_with_every_input(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    base = dict(
        gpu_name="NVIDIA GeForce RTX 4090",
        compute_capability=(8, 9),
        trt_version="10.3.0",
        bundle_hash="a" * 64,
        max_batch=32,
        fp16=True,
    )
    key = plan_key(**base)
    assert key == plan_key(**base)
    assert Path(key).name == key and " " not in key and key.startswith("NVIDIA_GeForce_RTX_4090-sm89-trt10.3.0-")
    changes = dict(
        gpu_name="NVIDIA RTX A6000",
        compute_capability=(8, 6),
        trt_version="10.4.0",
        bundle_hash="b" * 64,
        max_batch=64,
        fp16=False,
    )
    keys = {key}
    for field, value in changes.items():
        keys.add(plan_key(**{**base, field: value}))
    assert len(keys) == 1 + len(changes)
    assert timing_cache_name("A 100", (8, 0), "10.3.0") != timing_cache_name("A 100", (9, 0), "10.3.0")
    monkeypatch.setenv("AVGAN_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path / "trt"
    monkeypatch.delenv("AVGAN_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "avgan" / "trt"


# -- bundles --------------------------------------------------------------------------------------


@pytest.fixture()
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_bundle, tmp_path / "b"))


def test_load_bundle_fields(tiny_bundle: Path) -> None:
    b = load_bundle(tiny_bundle)
    assert (b.family, b.sample_rate, b.window_samples, b.noise_dim, b.image_size) == ("wav2pix", 16000, 16000, 16, 64)
    assert b.labels == ("ana", "ben", "cleo") and list(b.inputs) == ["audio", "noise"] and list(b.outputs) == ["image"]
    assert b.inputs["noise"].fill == "normal" and b.outputs["image"].item_shape == (3, 64, 64)
    assert b.digest == b.files["model.onnx"] and b.onnx_path.is_file() and b.pt2_path.is_file()
    assert load_bundle(tiny_bundle / "bundle.json").path == tiny_bundle


def test_corrupted_file_is_named(bundle_copy: Path) -> None:
    with open(bundle_copy / "model.onnx", "r+b") as fh:
        fh.seek(1000)
        byte = fh.read(1)
        fh.seek(1000)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(BundleError, match=r"model\.onnx: sha256 mismatch"):
        load_bundle(bundle_copy)
    with pytest.raises(BundleError, match=r"model\.onnx: sha256 mismatch"):
        Generator(bundle_copy, warmup=False)
    load_bundle(bundle_copy, verify=False)  # opt-out still loads


def test_missing_file_and_dir_and_json(bundle_copy: Path, tmp_path: Path) -> None:
    (bundle_copy / "model.pt2").unlink()
    with pytest.raises(BundleError, match=r"model\.pt2: missing"):
        load_bundle(bundle_copy)
    with pytest.raises(BundleError, match="no such bundle directory"):
        load_bundle(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BundleError, match=r"not a model bundle \(no bundle.json\)"):
        load_bundle(empty)
    (bundle_copy / "bundle.json").write_text('{"format_version": 2,', encoding="utf-8")
    with pytest.raises(BundleError, match=r"bundle.json: not valid JSON \(line 1"):
        load_bundle(bundle_copy)
    (bundle_copy / "bundle.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(BundleError, match="JSON object"):
        load_bundle(bundle_copy)
    assert issubclass(BundleError, UserError) and issubclass(BundleError, ValueError)


def test_bad_manifest_values(bundle_copy: Path) -> None:
    manifest = json.loads((bundle_copy / "bundle.json").read_text())
    audio = manifest["inputs"]["audio"]
    for key, value, pattern in (
        ("format_version", FORMAT_VERSION + 1, "newer than this engine supports"),
        ("format_version", "1", "must be an integer"),
        ("format_version", 0, "must be 1 or more, got 0"),
        ("format_version", -3, "must be 1 or more, got -3"),
        ("sample_rate", "16000", "'sample_rate' must be int"),
        ("inputs", {"audio": {**audio, "shape": [1, 16000]}}, r"'inputs.audio': shape must be \[null, n1, ...\]"),
        ("inputs", {"audio": {**audio, "fill": "random"}}, "'fill' must be one of normal, zeros, required"),
        ("outputs", {"image": {"shape": [None, 4, 64, 64]}}, r"'outputs.image' must be \[null, 3, H, W\]"),
        ("outputs", {}, "'outputs' must name at least one tensor"),
        ("files", {**manifest["files"], "../evil": "0" * 64}, "not a plain file name"),
    ):
        (bundle_copy / "bundle.json").write_text(json.dumps({**manifest, key: value}))
        with pytest.raises(BundleError, match=pattern):
            load_bundle(bundle_copy)
    for key in ("labels", "format_version"):
        broken = dict(manifest)
        del broken[key]
        (bundle_copy / "bundle.json").write_text(json.dumps(broken))
        with pytest.raises(BundleError, match=f"missing key '{key}'|no 'format_version'"):
            load_bundle(bundle_copy)


def test_format_1_manifest_is_upgraded_on_load(bundle_copy: Path) -> None:
    """A format-1 manifest (bare shapes, ``identities``, pose keys at the top level) loads through the one upgrade
    function; format 2 is unchanged by it."""
    manifest = json.loads((bundle_copy / "bundle.json").read_text())
    old = {k: v for k, v in manifest.items() if k not in ("inputs", "outputs", "labels", "family_info")}
    old.update(
        format_version=1, window_samples=16000, noise_dim=16, image_size=64, identities=["ana", "ben", "cleo"],
        inputs={"audio": [None, 16000], "noise": [None, 16]}, outputs={"image": [None, 3, 64, 64]},
        truncation=0.7, pose_code_dim=0, appearance_code_dim=0, pose_prior="normal", pose_prior_fit=None,
    )  # fmt: skip
    up = upgrade_manifest(old)
    assert up["format_version"] == FORMAT_VERSION == 2 and old["format_version"] == 1
    assert up["inputs"] == {"audio": {"shape": [None, 16000], "fill": "required"},
                            "noise": {"shape": [None, 16], "fill": "normal"}}  # fmt: skip
    assert up["outputs"] == {"image": {"shape": [None, 3, 64, 64]}}
    assert up["labels"] == ["ana", "ben", "cleo"] and "identities" not in up and "window_samples" not in up
    assert up["family_info"] == {"truncation": 0.7, "pose_code_dim": 0, "appearance_code_dim": 0,
                                 "pose_prior": "normal", "pose_prior_fit": None}  # fmt: skip
    assert up["export"] == manifest["export"]  # unknown keys survive
    assert upgrade_manifest(manifest) == manifest  # current version: unchanged
    (bundle_copy / "bundle.json").write_text(json.dumps(old))
    b = load_bundle(bundle_copy)  # loading goes through the same upgrade
    assert b.window_samples == 16000 and b.noise_dim == 16 and b.image_size == 64 and b.labels == ("ana", "ben", "cleo")
    gen = Generator(bundle_copy, backend="onnxruntime-cpu", warmup=False)
    assert gen(np.zeros((1, 16000), np.float32), seed=0).shape == (1, 64, 64, 3)


# -- benchmark wiring -----------------------------------------------------------------------------


def test_bench_engine_cli(tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import run

    out = tmp_path / "results.json"
    out.write_text(json.dumps({"benchmarks": {"render": {"rows": [{"case": "kept"}]}}}))
    monkeypatch.setattr(sys, "argv", ["run.py", "bench"])
    argv = ["bench", "--only", "engine", "--bundle", str(tiny_bundle), "--out", str(out), "--calls", "4"]
    assert run.main([*argv, "--batches", "1,3", "--backends", "onnxruntime-cpu,torch-cpu,tensorrt"]) == 0
    table = capsys.readouterr().out
    assert "torch-eager" in table and "onnxruntime-cpu" in table and "skipped: tensorrt" in table
    data = json.loads(out.read_text())
    rows = data["benchmarks"]["engine"]["rows"]
    timed = {(r["backend"], r["batch"]) for r in rows if "p50_ms" in r}
    backends = (
        "torch-eager",
        "onnxruntime-cpu",
        "torch-cpu",
        "onnxruntime-cpu/as-exported",
        "onnxruntime-cpu/spin-in-call",
    )
    assert timed == {(b, n) for b in backends for n in (1, 3)}
    assert all(r["max_abs_err"] <= 1e-3 and r["calls"] == 4 for r in rows if "p50_ms" in r)
    assert data["benchmarks"]["render"]["rows"] == [{"case": "kept"}]  # other results survive
    assert data["machine"]["cpu_count"] and data["machine"]["onnxruntime"]


def test_bench_engine_repeats_pool_calls_and_report_the_ratio_spread(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import benchmarks.engine as be
    import run

    monkeypatch.setattr(be, "REPEAT_PAUSE_S", 0.0)
    monkeypatch.setattr(sys, "argv", ["run.py", "bench"])
    out = tmp_path / "results.json"
    argv = ["bench", "--only", "engine", "--bundle", str(tiny_bundle), "--out", str(out), "--calls", "4"]
    assert run.main([*argv, "--batches", "1", "--backends", "onnxruntime-cpu", "--repeats", "3"]) == 0
    assert "ratio_range" in capsys.readouterr().out
    rows = [r for r in json.loads(out.read_text())["benchmarks"]["engine"]["rows"] if "p50_ms" in r]
    assert rows and all(r["calls"] == 12 and len(r["ratio_per_repeat"]) == 3 for r in rows)
    for r in rows:
        low, high = (float(v) for v in r["ratio_range"].split("-"))
        assert low == pytest.approx(min(r["ratio_per_repeat"]), abs=0.006)
        assert high == pytest.approx(max(r["ratio_per_repeat"]), abs=0.006)
    assert run.main([*argv, "--repeats", "0"]) != 0
    assert "--repeats" in capsys.readouterr().err


def test_bench_missing_default_bundle_is_clear(monkeypatch: pytest.MonkeyPatch, capsys, tmp_path: Path) -> None:
    import benchmarks.engine as be
    import run

    monkeypatch.setattr(be, "DEFAULT_BUNDLE", tmp_path / "presets" / "models" / "wav2pix-64")
    monkeypatch.setattr(sys, "argv", ["run.py", "bench"])
    assert run.main(["bench", "--only", "engine", "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert "default bundle" in err and "does not exist" in err and "--bundle" in err
