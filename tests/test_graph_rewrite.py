"""engine.graph_rewrite: every rewrite computes what the graph computed before, and leaves alone what it must not."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine.backends.ort_backend import OnnxRuntimeBackend
from engine.bundle import load_bundle
from engine.graph_rewrite import (
    channel_mean_as_conv,
    conv1d_as_conv2d,
    fold_symmetric_frame_conv,
    mirrored_power_mel,
    optimize_for_cpu,
    square_as_mul,
)

OPSET = [helper.make_opsetid("", 18)]


def _run(model: onnx.ModelProto | bytes, feeds: dict[str, np.ndarray]) -> np.ndarray:
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _dft_basis(n_fft: int) -> np.ndarray:
    """Periodic-Hann-windowed [cos; -sin] DFT rows, [2K, 1, n_fft] -- the log-mel front end's kernel."""
    n = np.arange(n_fft)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)
    k = np.arange(n_fft // 2 + 1)[:, None]
    phase = 2 * np.pi * k * n[None, :] / n_fft
    return np.concatenate([np.cos(phase) * window, -np.sin(phase) * window])[:, None, :].astype(np.float32)


def _frame_conv_model(weight: np.ndarray, samples: int, hop: int) -> onnx.ModelProto:
    """audio [B, samples] -> Conv(Unsqueeze(audio, 1), weight, stride hop) -> [B, 2K, T]."""
    graph = helper.make_graph(
        [
            helper.make_node("Unsqueeze", ["audio", "axis1"], ["x3"]),
            helper.make_node("Conv", ["x3", "basis"], ["spec"], strides=[hop], kernel_shape=[weight.shape[2]]),
        ],
        "frames",
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", samples])],
        [helper.make_tensor_value_info("spec", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "basis"), numpy_helper.from_array(np.array([1], np.int64), "axis1")],
    )
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=OPSET, ir_version=9))


@pytest.mark.parametrize(
    ("n_fft", "hop", "samples"),
    [(64, 20, 1000), (64, 16, 1000), (64, 20, 64), (512, 160, 16000), (32, 12, 300)],
)
def test_folded_dft_conv_matches_the_convolution(n_fft: int, hop: int, samples: int) -> None:
    model = _frame_conv_model(_dft_basis(n_fft), samples, hop)
    audio = np.random.default_rng(n_fft + hop).uniform(-1, 1, (3, samples)).astype(np.float32)
    expected = _run(model, {"audio": audio})
    assert fold_symmetric_frame_conv(model) == 1
    assert "Conv" not in {n.op_type for n in model.graph.node}
    got = _run(model, {"audio": audio})
    assert got.shape == expected.shape == (3, n_fft + 2, 1 + (samples - n_fft) // hop)
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_kernels_without_the_symmetry_are_not_folded() -> None:
    rng = np.random.default_rng(0)
    asymmetric = rng.standard_normal((66, 1, 64)).astype(np.float32)
    assert fold_symmetric_frame_conv(_frame_conv_model(asymmetric, 1000, 20)) == 0
    first_column = _dft_basis(64)
    first_column[:, 0, 0] = 0.5  # x[0] would be dropped by the fold
    assert fold_symmetric_frame_conv(_frame_conv_model(first_column, 1000, 20)) == 0
    # ... but still become a 2-D convolution, with the same result
    model = _frame_conv_model(asymmetric, 1000, 20)
    audio = rng.uniform(-1, 1, (2, 1000)).astype(np.float32)
    expected = _run(model, {"audio": audio})
    assert conv1d_as_conv2d(model) == 1
    assert np.abs(_run(model, {"audio": audio}) - expected).max() <= 1e-4


def test_conv1d_as_conv2d_keeps_padding_stride_dilation_and_groups() -> None:
    rng = np.random.default_rng(1)
    w = rng.standard_normal((8, 2, 5)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[2, 1], strides=[2], dilations=[2], group=2)],
        "c1d",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 37])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=OPSET, ir_version=9)
    x = rng.standard_normal((3, 4, 37)).astype(np.float32)
    expected = _run(model, {"x": x})
    assert conv1d_as_conv2d(model) == 1
    got = _run(model, {"x": x})
    assert got.shape == expected.shape and np.abs(got - expected).max() <= 1e-5


def test_pixel_norm_mean_and_square_rewrites() -> None:
    graph = helper.make_graph(
        [
            helper.make_node("Pow", ["x", "two"], ["sq"]),
            helper.make_node("ReduceMean", ["sq", "axis1"], ["m"], keepdims=1),
            helper.make_node("ReduceMean", ["sq", "axis2"], ["other_axis"], keepdims=1),
        ],
        "pn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6, 5, 7])],
        [
            helper.make_tensor_value_info("m", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("other_axis", TensorProto.FLOAT, None),
        ],
        [
            numpy_helper.from_array(np.array(2.0, np.float32), "two"),
            numpy_helper.from_array(np.array([1], np.int64), "axis1"),
            numpy_helper.from_array(np.array([2], np.int64), "axis2"),
        ],
    )
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=OPSET, ir_version=9))
    x = np.random.default_rng(2).standard_normal((2, 6, 5, 7)).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = sess.run(None, {"x": x})
    assert channel_mean_as_conv(model) == 1  # only the channel-axis mean
    assert square_as_mul(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Mul", "Conv", "ReduceMean"]
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for g, e in zip(got, expected):
        assert np.abs(g - e).max() <= 1e-5


def test_bundle_graph_is_rewritten_and_agrees(tiny_bundle: Path, tiny_model) -> None:
    path = str(load_bundle(tiny_bundle).onnx_path)
    data, counts = optimize_for_cpu(path)
    assert data is not None
    assert counts == {
        "mirrored_power_mel": 1,
        "folded_dft_conv": 0,
        "conv1d_as_conv2d": 4,
        "channel_mean_as_conv": 5,
        "square_as_mul": 5,
    }
    rng = np.random.default_rng(3)
    for batch in (1, 3):
        feeds = {
            "audio": np.clip(0.3 * rng.standard_normal((batch, 16000)), -1, 1).astype(np.float32),
            "noise": rng.standard_normal((batch, tiny_model.cfg.model.noise_dim)).astype(np.float32),
        }
        assert np.abs(_run(data, feeds) - _run(onnx.load(path), feeds)).max() <= 1e-4
    backend = OnnxRuntimeBackend(load_bundle(tiny_bundle))
    assert backend.rewrites == counts
    assert OnnxRuntimeBackend(load_bundle(tiny_bundle), rewrites=False).rewrites == {}


def test_unreadable_graph_costs_only_the_rewrite(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not an onnx graph")
    with caplog.at_level(logging.WARNING, logger="engine.graph_rewrite"):
        assert optimize_for_cpu(str(bad)) == (None, {})
    assert "model.onnx" in caplog.text and "skipped" in caplog.text


def _power_model(weight: np.ndarray, samples: int, hop: int, square: str = "Mul") -> onnx.ModelProto:
    """audio -> frame Conv -> Slice into halves (re, im) -> re^2 + im^2 -> output ``power``."""
    k = weight.shape[0] // 2
    model = _frame_conv_model(weight, samples, hop)
    g = model.graph
    g.initializer.extend(
        [
            *(
                numpy_helper.from_array(np.array(v, np.int64), name)
                for name, v in (("zero", [0]), ("k", [k]), ("big", [2**63 - 1]), ("one", [1]))
            ),
            numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        ]
    )
    squares = (
        [helper.make_node("Mul", ["re", "re"], ["re2"]), helper.make_node("Mul", ["im", "im"], ["im2"])]
        if square == "Mul"
        else [helper.make_node("Pow", ["re", "two"], ["re2"]), helper.make_node("Pow", ["im", "two"], ["im2"])]
    )
    g.node.extend(
        [
            helper.make_node("Slice", ["spec", "zero", "k", "one", "one"], ["re"]),
            helper.make_node("Slice", ["spec", "k", "big", "one", "one"], ["im"]),
            *squares,
            helper.make_node("Add", ["re2", "im2"], ["power"]),
        ]
    )
    del g.output[:]
    g.output.extend([helper.make_tensor_value_info("power", TensorProto.FLOAT, None)])
    return model


def test_split_into_real_and_imaginary_parts_reads_the_halves_directly() -> None:
    n_fft, hop, samples = 64, 20, 1000
    model = _power_model(_dft_basis(n_fft), samples, hop)
    audio = np.random.default_rng(5).uniform(-1, 1, (2, samples)).astype(np.float32)
    expected = _run(model, {"audio": audio})
    assert fold_symmetric_frame_conv(model) == 1
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Identity") == 2
    assert not any(n.op_type == "Slice" and n.input[0] == "spec" for n in model.graph.node)
    got = _run(model, {"audio": audio})
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def _log_mel_model(
    weight: np.ndarray, samples: int, hop: int, bank: np.ndarray, square: str = "Mul"
) -> onnx.ModelProto:
    """:func:`_power_model` -> MatMul(bank, power) -> log: the log-mel front end's graph, output ``log_mel``."""
    model = _power_model(weight, samples, hop, square)
    g = model.graph
    g.initializer.extend(
        [
            numpy_helper.from_array(bank.astype(np.float32), "bank"),
            numpy_helper.from_array(np.array(1e-6, np.float32), "eps"),
        ]
    )
    g.node.extend(
        [
            helper.make_node("MatMul", ["bank", "power"], ["mel"]),
            helper.make_node("Add", ["mel", "eps"], ["mel_eps"]),
            helper.make_node("Log", ["mel_eps"], ["log_mel"]),
        ]
    )
    del g.output[:]
    g.output.extend([helper.make_tensor_value_info("log_mel", TensorProto.FLOAT, None)])
    return model


def _bank(n_mels: int, k: int, seed: int = 0) -> np.ndarray:
    """A sparse non-negative [n_mels, k] filterbank (triangular-filter-like support, random weights)."""
    rng = np.random.default_rng(seed)
    return np.abs(rng.standard_normal((n_mels, k))) * (rng.random((n_mels, k)) < 0.2)


@pytest.mark.parametrize(
    ("n_fft", "hop", "samples", "square"),
    [(512, 160, 16000, "Mul"), (64, 20, 1000, "Pow"), (32, 12, 300, "Mul"), (64, 16, 64, "Mul")],
)
def test_mirrored_power_mel_matches_the_front_end(n_fft: int, hop: int, samples: int, square: str) -> None:
    k = n_fft // 2 + 1
    model = _log_mel_model(_dft_basis(n_fft), samples, hop, _bank(16, k), square)
    rng = np.random.default_rng(n_fft)
    audio = rng.uniform(-1, 1, (3, samples)).astype(np.float32)
    audio[1] *= 1e-3  # quiet input: the log amplifies relative error
    expected = _run(model, {"audio": audio})
    assert mirrored_power_mel(model) == 1
    ops = [n.op_type for n in model.graph.node]
    assert "Conv" not in ops and "Pow" not in ops
    assert ops.count("MatMul") == 2  # the DFT products and the filterbank
    assert fold_symmetric_frame_conv(model) == 0  # nothing left for the one-level fold
    got = _run(model, {"audio": audio})
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-3


def test_mirrored_power_mel_leaves_other_front_ends_to_the_plain_fold() -> None:
    n_fft, hop, samples = 64, 20, 1000
    k = n_fft // 2 + 1
    audio = np.random.default_rng(7).uniform(-1, 1, (2, samples)).astype(np.float32)
    # bins out of frequency order: the mirror pairs are not rows k and K-1-k
    shuffled = _dft_basis(n_fft)
    order = np.r_[np.random.default_rng(1).permutation(k)]
    shuffled = np.concatenate([shuffled[:k][order], shuffled[k:][order]])
    bank = _bank(16, k)
    model = _log_mel_model(shuffled, samples, hop, bank[:, order])
    assert mirrored_power_mel(model) == 0
    # the power spectrum also read elsewhere (a second graph output)
    model = _log_mel_model(_dft_basis(n_fft), samples, hop, bank)
    model.graph.output.extend([helper.make_tensor_value_info("power", TensorProto.FLOAT, None)])
    assert mirrored_power_mel(model) == 0
    # one of the squares also read elsewhere
    model = _log_mel_model(_dft_basis(n_fft), samples, hop, bank)
    model.graph.output.extend([helper.make_tensor_value_info("im2", TensorProto.FLOAT, None)])
    assert mirrored_power_mel(model) == 0
    # a filterbank that is an input, not a constant
    model = _log_mel_model(_dft_basis(n_fft), samples, hop, bank)
    model.graph.input.extend([helper.make_tensor_value_info("bank_in", TensorProto.FLOAT, [16, k])])
    next(n for n in model.graph.node if n.op_type == "MatMul").input[0] = "bank_in"
    assert mirrored_power_mel(model) == 0
    expected = _run(model, {"audio": audio, "bank_in": bank.astype(np.float32)})
    assert fold_symmetric_frame_conv(model) == 1  # ... the one-level fold still applies
    got = _run(model, {"audio": audio, "bank_in": bank.astype(np.float32)})
    assert np.abs(got - expected).max() <= 1e-3


def test_rewritten_graph_is_cached_by_digest(tiny_bundle, tmp_path, monkeypatch):
    """The ONNX Runtime CPU backend's rewrite (importing ``onnx`` alone takes over a second) is done once per graph:
    later loads read the cached bytes and counts without calling the rewriter."""
    from engine import graph_rewrite as gr
    from engine.bundle import load_bundle

    bundle = load_bundle(tiny_bundle)
    data, counts = gr.cached_optimize_for_cpu(str(bundle.onnx_path), bundle.digest, tmp_path)
    assert data is not None and any(counts.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{bundle.digest}-v{gr.REWRITE_VERSION}.json",
                                                         f"{bundle.digest}-v{gr.REWRITE_VERSION}.onnx"]  # fmt: skip

    def not_again(path):
        raise AssertionError("the cached graph should have been used")

    monkeypatch.setattr(gr, "optimize_for_cpu", not_again)
    assert gr.cached_optimize_for_cpu(str(bundle.onnx_path), bundle.digest, tmp_path) == (data, counts)
    # a graph nothing matched is remembered too, so its loads skip the rewriter as well
    monkeypatch.setattr(gr, "optimize_for_cpu", lambda path: (None, {"square_as_mul": 0}))
    assert gr.cached_optimize_for_cpu(str(bundle.onnx_path), "f" * 64, tmp_path) == (None, {"square_as_mul": 0})
    monkeypatch.setattr(gr, "optimize_for_cpu", not_again)
    assert gr.cached_optimize_for_cpu(str(bundle.onnx_path), "f" * 64, tmp_path) == (None, {"square_as_mul": 0})
