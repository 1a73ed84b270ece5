"""Exact ONNX graph rewrites for the ONNX Runtime CPU backend.

ONNX Runtime's own optimiser (``ORT_ENABLE_ALL``) fuses and re-lays out what it
recognises; these rewrites hand it a graph it runs faster, without changing
what the graph computes (float32 results agree to rounding, ~1e-5):

1. **Folded DFT front end** (:func:`fold_symmetric_frame_conv`). A strided
   single-channel ``Conv`` whose kernel rows are even or odd about the frame
   centre -- the windowed DFT basis of a log-mel front end, ``[cos; -sin]`` rows
   under a symmetric window such as the periodic Hann window -- is the STFT as a
   convolution. Framing the signal and folding each frame first (``x[n] + x[N-n]``
   for the even rows, ``x[n] - x[N-n]`` for the odd rows, the classic
   even/odd decomposition of a real DFT; Oppenheim & Schafer, *Discrete-Time
   Signal Processing*, 3rd ed., sec. 8.5) halves the multiply-adds: two
   ``[T, N/2] x [N/2, K]`` products instead of one ``[T, N] x [N, 2K]``.
   **One step further** (:func:`mirrored_power_mel`, tried first): when the
   rows are the ``K = N/2 + 1`` bins in frequency order, the basis of bin
   ``N/2 - k`` is that of bin ``k`` times ``(-1)^n``, so splitting each folded
   frame by the parity of ``n`` (``A``: even ``n``, ``B``: odd ``n``; ``C``,
   ``D`` likewise for the sine rows) gives ``Re[k] = A + B`` and
   ``Re[N/2 - k] = A - B`` (``|Im|`` from ``C +- D``) from products over bins
   ``0..N/4`` only -- the next radix-2 step of a real FFT, halving the
   multiply-adds again (one batched ``[4, N/4 + 1, N/4]`` product). It applies
   when the spectrum is read only as a power spectrum ``re^2 + im^2`` into a
   constant filterbank ``MatMul(F, power)`` (the log-mel front end): the
   squares are summed per half and the filterbank's columns are reordered to
   the mirrored bins, so the bins never need to be put back in order.
2. **1-D convolutions as 2-D** (:func:`conv1d_as_conv2d`). ONNX Runtime's
   blocked NCHWc convolution kernels (the layout optimiser for AVX2/AVX-512)
   only take 4-D tensors; a ``Conv`` on ``[B, C, T]`` runs through the slower
   generic im2col path. ``Unsqueeze -> Conv(1 x k) -> Squeeze`` gets the fast
   kernels.
3. **Channel mean as a 1x1 convolution** (:func:`channel_mean_as_conv`). The
   pixel norm of the generator (Karras et al., ICLR 2018) takes
   ``ReduceMean`` over the channel axis of ``[B, C, H, W]``, a strided loop in
   ONNX Runtime; a ``Conv`` with one ``1 x 1`` filter of weights ``1/C`` is one
   small GEMM.
4. **Squares as products** (:func:`square_as_mul`): ``Pow(x, 2)`` becomes
   ``Mul(x, x)``.

:func:`optimize_for_cpu` applies them all and returns the serialised model; the
ONNX Runtime backend feeds it to the session instead of the file (the bundle
on disk is never changed). A rewrite that does not match leaves the graph as
it was, so any valid graph loads. Measured effect on the default 64 px bundle
(2 cores, batch 1): see ``docs/ENGINE.md``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

_ATOL = 1e-6  # kernel symmetry tolerance, relative to the kernel's largest magnitude


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _explicit_padding(attrs: dict[str, Any]) -> bool:
    """True when a Conv's padding is given by ``pads`` (no ``auto_pad``)."""
    return attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")


def _constants(graph: Any) -> dict[str, np.ndarray]:
    """Initializer values by name."""
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in graph.initializer}


def _set_nodes(graph: Any, nodes: list[Any]) -> None:
    del graph.node[:]
    graph.node.extend(nodes)


def _static_dims(graph: Any, name: str) -> list[int | None] | None:
    """Static dims of a value (None for a symbolic dim), or None when the shape is unknown."""
    for v in list(graph.input) + list(graph.value_info) + list(graph.output):
        if v.name == name and v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape"):
            return [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
    return None


class _Builder:
    """Adds uniquely named initializers and nodes to a graph."""

    def __init__(self, graph: Any, prefix: str) -> None:
        self.graph, self.prefix, self.n = graph, prefix, 0
        self.nodes: list[Any] = []  # what :meth:`emit` made, in order

    def name(self, tag: str) -> str:
        self.n += 1
        return f"{self.prefix}/{tag}_{self.n}"

    def const(self, value: np.ndarray, tag: str = "c") -> str:
        from onnx import numpy_helper

        name = self.name(tag)
        self.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def ints(self, values: list[int]) -> str:
        return self.const(np.asarray(values, np.int64), "i")

    def node(self, op: str, inputs: list[str], out: str | None = None, **attrs: Any) -> tuple[Any, str]:
        from onnx import helper

        out = out or self.name(op.lower())
        return helper.make_node(op, inputs, [out], name=self.name(op), **attrs), out

    def emit(self, op: str, inputs: list[str], out: str | None = None, **attrs: Any) -> str:
        """:meth:`node`, appended to :attr:`nodes`; returns the output name."""
        node, out = self.node(op, inputs, out, **attrs)
        self.nodes.append(node)
        return out


def fold_symmetric_frame_conv(model: Any) -> int:
    """Rewrite 1 (see the module docstring), in place. Returns the number of convolutions rewritten.

    Matches ``Conv(Unsqueeze(x [B, S], axis 1), W [2K, 1, N])`` with stride ``H``, no padding, dilation
    or bias, a static signal length ``S >= N``, even ``N``, ``W[:, 0] == 0`` and
    ``W[k, n] == s_k * W[k, N - n]`` for n in 1..N-1 with ``s_k = +1`` for the first K rows and ``-1`` for
    the last K (to ``1e-6`` of the largest weight). Output ``[B, 2K, 1 + (S - N) // H]`` as before.
    """
    graph = model.graph
    consts = _constants(graph)
    producers = {o: n for n in graph.node for o in n.output}
    new_nodes: list[Any] = []
    halves: dict[str, tuple[str, str, int]] = {}  # conv output -> (real part, imaginary part, K)
    count = 0
    for node in graph.node:
        rewritten = _fold_one(graph, node, consts, producers) if node.op_type == "Conv" else None
        if rewritten is None:
            new_nodes.append(node)
        else:
            nodes, re, im, k = rewritten
            new_nodes.extend(nodes)
            halves[node.output[0]] = (re, im, k)
            count += 1
    if count:
        _take_halves_directly(new_nodes, halves, consts)
        _set_nodes(graph, new_nodes)
    return count


def _take_halves_directly(nodes: list[Any], halves: dict[str, tuple[str, str, int]], consts: dict) -> None:
    """Consumers that slice the ``[B, 2K, T]`` output back into its two halves along axis 1 (as the log-mel
    front end does for real and imaginary parts) read the half directly instead (``Identity``), so the
    concatenation and the split cancel out; the unused ``Concat`` is pruned later."""
    from onnx import helper

    for i, node in enumerate(nodes):
        if node.op_type != "Slice" or node.input[0] not in halves:
            continue
        re, im, k = halves[node.input[0]]
        half = _half_slice(node, node.input[0], k, consts)
        if half is not None:
            nodes[i] = helper.make_node("Identity", [(re, im)[half]], list(node.output), name=node.name)


def _match_frame_conv(graph: Any, node: Any, consts: dict, producers: dict) -> tuple[np.ndarray, int, int, str] | None:
    """(float64 kernel [2K, N], hop, static signal length, signal name) when ``node`` is a frame convolution whose
    kernel rows are even (first K) or odd (last K) about the frame centre (see :func:`fold_symmetric_frame_conv`)."""
    if node.op_type != "Conv" or len(node.input) != 2 or node.input[1] not in consts:
        return None
    w = consts[node.input[1]]
    a = _attrs(node)
    if w.ndim != 3 or w.shape[1] != 1 or w.shape[0] % 2 or w.shape[2] % 2 or a.get("group", 1) != 1:
        return None
    if any(a.get("pads", [0, 0])) or any(d != 1 for d in a.get("dilations", [1])) or not _explicit_padding(a):
        return None
    unsq = producers.get(node.input[0])
    if unsq is None or unsq.op_type != "Unsqueeze" or len(unsq.input) != 2 or unsq.input[1] not in consts:
        return None
    if consts[unsq.input[1]].tolist() not in ([1], 1):
        return None
    dims = _static_dims(graph, unsq.input[0])
    two_k, _, n_fft = w.shape
    if not dims or len(dims) != 2 or dims[1] is None or dims[1] < n_fft:
        return None
    k = two_k // 2
    w2 = w[:, 0, :].astype(np.float64)
    tol = _ATOL * max(1e-30, float(np.abs(w2).max()))
    mirrored = w2[:, :0:-1]  # W[:, N - n] for n = 1..N-1
    sign = np.r_[np.ones(k), -np.ones(k)][:, None]
    if np.abs(w2[:, 0]).max() > tol or np.abs(w2[:, 1:] - sign * mirrored).max() > tol:
        return None
    return w2, int(a.get("strides", [1])[0]), int(dims[1]), unsq.input[0]


def _frame_nodes(b: _Builder, x: str, sig: int, n_fft: int, hop: int) -> tuple[str, int]:
    """Emit nodes that cut ``x [B, sig]`` into frames ``[B, n_fft, T]`` (frames as columns) with hop ``hop``;
    returns (frames name, T). Built from hop-sized chunks with Reshape/Transpose/Slice/Concat (block copies)."""
    frames_t = 1 + (sig - n_fft) // hop
    full, rem = divmod(n_fft, hop)
    chunks = frames_t + full - (0 if rem else 1)
    need = chunks * hop
    if need > sig:
        x = b.emit("Pad", [x, b.ints([0, 0, 0, need - sig])], mode="constant")
    else:
        x = b.emit("Slice", [x, b.ints([0]), b.ints([need]), b.ints([1])])
    c = b.emit("Reshape", [x, b.ints([-1, chunks, hop])])
    ct = b.emit("Transpose", [c], perm=[0, 2, 1])  # [B, H, chunks]: frames are built as columns
    parts = [
        b.emit("Slice", [ct, b.ints([0, i]), b.ints([hop if i < full else rem, i + frames_t]), b.ints([1, 2])])
        for i in range(full + (1 if rem else 0))
    ]
    return b.emit("Concat", parts, axis=1), frames_t  # [B, N, T]


def _fold_one(graph: Any, node: Any, consts: dict, producers: dict) -> tuple[list[Any], str, str, int] | None:
    """(new nodes, real-part name, imaginary-part name, K) for a matching ``node``, else None."""
    match = _match_frame_conv(graph, node, consts, producers)
    if match is None:
        return None
    w2, hop, sig, x = match
    k, n_fft = w2.shape[0] // 2, w2.shape[1]
    h = n_fft // 2
    b = _Builder(graph, node.name or "dft")
    frames, _ = _frame_nodes(b, x, sig, n_fft, hop)
    lo = b.emit("Slice", [frames, b.ints([1]), b.ints([h]), b.ints([1])])  # x[1 .. h-1]
    hi = b.emit("Slice", [frames, b.ints([n_fft - 1]), b.ints([h]), b.ints([1]), b.ints([-1])])  # x[N-1 .. h+1]
    mid = b.emit("Slice", [frames, b.ints([h]), b.ints([h + 1]), b.ints([1])])  # x[h]
    even = b.emit("Concat", [b.emit("Add", [lo, hi]), mid], axis=1)  # [B, h, T]
    odd = b.emit("Sub", [lo, hi])  # [B, h-1, T]
    re = b.emit("MatMul", [b.const(w2[:k, 1 : h + 1].astype(np.float32), "even_rows"), even])  # [B, K, T]
    im = b.emit("MatMul", [b.const(w2[k:, 1:h].astype(np.float32), "odd_rows"), odd])  # [B, K, T]
    b.emit("Concat", [re, im], out=node.output[0], axis=1)  # [B, 2K, T]
    return b.nodes, re, im, k


def _half_slice(node: Any, source: str, k: int, consts: dict) -> int | None:
    """0 / 1 when ``node`` slices the first / second half (K rows) of ``source [B, 2K, T]`` along axis 1."""
    if node.op_type != "Slice" or node.input[0] != source or len(node.input) < 4:
        return None
    if any(name not in consts for name in node.input[1:]):
        return None
    starts, ends, axes = (consts[name].tolist() for name in node.input[1:4])
    steps = consts[node.input[4]].tolist() if len(node.input) > 4 else [1]
    if axes not in ([1], [-2]) or steps != [1]:
        return None
    if starts == [0] and ends == [k]:
        return 0
    if starts == [k] and ends[0] >= 2 * k:
        return 1
    return None


def _square_of(node: Any, consts: dict) -> str | None:
    """The input ``x`` when ``node`` is ``Mul(x, x)`` or ``Pow(x, 2)``."""
    if node.op_type == "Mul" and len(node.input) == 2 and node.input[0] == node.input[1]:
        return node.input[0]
    if node.op_type == "Pow" and len(node.input) == 2 and node.input[1] in consts:
        e = consts[node.input[1]]
        if e.size == 1 and float(e.reshape(())) == 2.0:
            return node.input[0]
    return None


def _power_to_mel(graph: Any, conv: Any, k: int, consts: dict) -> tuple[list[Any], np.ndarray, str] | None:
    """(consumer nodes, filterbank [M, K], output name) when the frame convolution's output is only read as
    ``MatMul(F, re * re + im * im)`` with a constant filterbank ``F`` -- the power spectrum of a log-mel front
    end -- with ``re``/``im`` the two halves along axis 1."""
    users: dict[str, list[Any]] = {}
    for n in graph.node:
        for name in dict.fromkeys(n.input):  # a node reading one value twice (Mul(x, x)) is one user
            users.setdefault(name, []).append(n)
    outputs = {o.name for o in graph.output}

    def only_user(name: str) -> Any | None:
        found = users.get(name, [])
        return found[0] if len(found) == 1 and name not in outputs else None

    slices = users.get(conv.output[0], [])
    if len(slices) != 2 or conv.output[0] in outputs:
        return None
    by_half = {_half_slice(n, conv.output[0], k, consts): n for n in slices}
    if set(by_half) != {0, 1}:
        return None
    halves = [by_half[0], by_half[1]]
    squares = [only_user(n.output[0]) for n in halves]
    if any(sq is None or _square_of(sq, consts) != half.output[0] for sq, half in zip(squares, halves)):
        return None
    add = only_user(squares[0].output[0])  # the one reader of both squares: Add(re^2, im^2)
    if add is None or add.op_type != "Add" or only_user(squares[1].output[0]) is not add:
        return None
    mel = only_user(add.output[0])
    if mel is None or mel.op_type != "MatMul" or mel.input[1] != add.output[0] or mel.input[0] not in consts:
        return None
    bank = consts[mel.input[0]]
    if bank.ndim != 2 or bank.shape[1] != k:
        return None
    return [*halves, *squares, add, mel], bank.astype(np.float64), mel.output[0]


def mirrored_power_mel(model: Any) -> int:
    """Rewrite 1 taken one step further (see the module docstring), in place. Returns the number of front
    ends rewritten.

    Matches a frame convolution as in :func:`fold_symmetric_frame_conv` with ``K = N/2 + 1`` rows per half,
    ``N/2`` even, rows in frequency order with mirrored bins ``W[K-1-i, n] == (-1)^n W[i, n]`` (and
    ``== +-(-1)^n W[K+i, n]`` in the odd half, one sign for all rows), read only as
    ``MatMul(F [M, K], re * re + im * im)``. Output ``[B, M, T]`` as before.
    """
    graph = model.graph
    consts = _constants(graph)
    producers = {o: n for n in graph.node for o in n.output}
    replaced: dict[int, list[Any]] = {}
    dropped: set[int] = set()
    for node in graph.node:
        match = _match_frame_conv(graph, node, consts, producers)
        if match is None:
            continue
        w2, hop, sig, x = match
        k, n_fft = w2.shape[0] // 2, w2.shape[1]
        h = n_fft // 2
        if k != h + 1 or h % 2:
            continue
        parity = np.where(np.arange(n_fft) % 2, -1.0, 1.0)
        tol = _ATOL * max(1e-30, float(np.abs(w2).max()))
        cos_rows, sin_rows = w2[:k], w2[k:]
        if np.abs(cos_rows[::-1] - parity * cos_rows).max() > tol:
            continue
        if min(np.abs(sin_rows[::-1] - s * parity * sin_rows).max() for s in (1.0, -1.0)) > tol:
            continue
        consumers = _power_to_mel(graph, node, k, consts)
        if consumers is None:
            continue
        old, bank, out = consumers
        replaced[id(node)] = _mirrored_nodes(graph, node, w2, bank, hop, sig, x, out)
        dropped.update(id(n) for n in old)
    if not replaced:
        return 0
    nodes: list[Any] = []
    for node in graph.node:
        if id(node) in replaced:
            nodes.extend(replaced[id(node)])
        elif id(node) not in dropped:
            nodes.append(node)
    _set_nodes(graph, nodes)
    return len(replaced)


def _mirrored_nodes(
    graph: Any, node: Any, w2: np.ndarray, bank: np.ndarray, hop: int, sig: int, x: str, out: str
) -> list[Any]:
    """The nodes of :func:`mirrored_power_mel` for one front end (see the module docstring for the algebra)."""
    k, n_fft = w2.shape[0] // 2, w2.shape[1]
    h, q = n_fft // 2, n_fft // 4
    lo_bins = q + 1  # bins 0..h/2; the mirrored bins h..h/2 come from the same products
    n_even, n_odd = np.arange(2, h + 1, 2), np.arange(1, h, 2)  # sample offsets in a frame, q each
    w_a = w2[:lo_bins][:, n_even].copy()
    w_a[:, -1] *= 0.5  # n = h pairs with itself: P + Q counts x[h] twice
    w_b = w2[:lo_bins][:, n_odd]
    w_c = w2[k : k + lo_bins][:, n_even]
    w_d = w2[k : k + lo_bins][:, n_odd]
    bank_hi = bank[:, h - np.arange(lo_bins)].copy()  # product row i of the mirrored half is bin h - i
    bank_hi[:, -1] = 0.0  # bin h/2 is in both halves; count it once
    b = _Builder(graph, node.name or "dft")
    frames, frames_t = _frame_nodes(b, x, sig, n_fft, hop)
    perm = np.r_[n_even, n_odd, n_fft - n_even, n_fft - n_odd]
    fp = b.emit("Gather", [frames, b.ints(list(perm))], axis=1)  # [B, 2h, T]: x[n] rows, then x[N - n] rows
    p = b.emit("Slice", [fp, b.ints([0]), b.ints([h]), b.ints([1])])
    r = b.emit("Slice", [fp, b.ints([h]), b.ints([2 * h]), b.ints([1])])
    even = b.emit("Add", [p, r])  # x[n] + x[N - n], n even then odd
    odd = b.emit("Sub", [p, r])  # x[n] - x[N - n]
    xs = b.emit("Reshape", [b.emit("Concat", [even, odd], axis=1), b.ints([0, 4, q, frames_t])])  # [B, 4, h/2, T]
    weights = np.stack([w_a, w_b, w_c, w_d]).astype(np.float32)  # [4, h/2 + 1, h/2]
    y = b.emit("MatMul", [b.const(weights, "mirrored_rows"), xs])  # [B, 4, h/2 + 1, T]: A, B, C, D

    def every_other(t: str, first: int) -> str:  # rows first, first + 2 of axis 1
        return b.emit("Slice", [t, b.ints([first]), b.ints([4]), b.ints([1]), b.ints([2])])

    ac, bd = every_other(y, 0), every_other(y, 1)
    plus = b.emit("Add", [ac, bd])  # re, im of bins 0..h/2
    minus = b.emit("Sub", [ac, bd])  # re, -+im of bins h..h/2
    z = b.emit("Concat", [plus, minus], axis=1)
    z2 = b.emit("Mul", [z, z])
    power = b.emit("Add", [every_other(z2, 0), every_other(z2, 1)])  # re^2 + im^2: [B, 2, h/2 + 1, T]
    power = b.emit("Reshape", [power, b.ints([0, 2 * lo_bins, frames_t])])
    fb = np.concatenate([bank[:, :lo_bins], bank_hi], axis=1).astype(np.float32)
    b.emit("MatMul", [b.const(fb, "mirrored_filterbank"), power], out=out)
    return b.nodes


def conv1d_as_conv2d(model: Any) -> int:
    """Rewrite 2 (see the module docstring), in place. Returns the number of convolutions rewritten.

    Every ``Conv`` with a 3-D initializer weight ``[Cout, Cin/group, k]`` becomes
    ``Squeeze(Conv(Unsqueeze(x, 2), W[:, :, None, :]), 2)`` with the attributes carried over.
    """
    graph = model.graph
    consts = _constants(graph)
    new_nodes: list[Any] = []
    count = 0
    for node in graph.node:
        w = consts.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        a = _attrs(node) if w is not None else {}
        if w is None or w.ndim != 3 or not _explicit_padding(a):
            new_nodes.append(node)
            continue
        b = _Builder(graph, node.name or "conv1d")
        weight = b.const(w[:, :, None, :], "w2d")
        pads = list(a.get("pads", [0, 0]))
        attrs = {
            "kernel_shape": [1, int(w.shape[2])],
            "strides": [1, *a.get("strides", [1])],
            "dilations": [1, *a.get("dilations", [1])],
            "pads": [0, pads[0], 0, pads[1]],
            "group": int(a.get("group", 1)),
        }
        axis = b.ints([2])
        n0, x4 = b.node("Unsqueeze", [node.input[0], axis])
        n1, y4 = b.node("Conv", [x4, weight, *node.input[2:]], **attrs)
        n2, _ = b.node("Squeeze", [y4, axis], out=node.output[0])
        new_nodes += [n0, n1, n2]
        count += 1
    if count:
        _set_nodes(graph, new_nodes)
    return count


def channel_mean_as_conv(model: Any) -> int:
    """Rewrite 3 (see the module docstring), in place. Returns the number of nodes rewritten.

    Matches ``ReduceMean(x, axes=[1], keepdims=1)`` on a 4-D ``x`` whose channel count C is static.
    """
    from onnx import helper

    graph = model.graph
    consts = _constants(graph)
    count = 0
    for i, node in enumerate(graph.node):
        if node.op_type != "ReduceMean" or len(node.input) != 2 or node.input[1] not in consts:
            continue
        if consts[node.input[1]].tolist() != [1] or _attrs(node).get("keepdims", 1) != 1:
            continue
        dims = _static_dims(graph, node.input[0])
        if not dims or len(dims) != 4 or not dims[1]:
            continue
        channels = int(dims[1])
        b = _Builder(graph, node.name or "channel_mean")
        weight = b.const(np.full((1, channels, 1, 1), 1.0 / channels, np.float32), "mean_w")
        graph.node[i].CopyFrom(
            helper.make_node(
                "Conv", [node.input[0], weight], list(node.output), name=b.name("Conv"), kernel_shape=[1, 1]
            )
        )
        count += 1
    return count


def square_as_mul(model: Any) -> int:
    """Rewrite 4 (see the module docstring), in place. Returns the number of nodes rewritten."""
    from onnx import helper

    graph = model.graph
    consts = _constants(graph)
    count = 0
    for i, node in enumerate(graph.node):
        x = _square_of(node, consts) if node.op_type == "Pow" else None
        if x is not None:
            graph.node[i].CopyFrom(helper.make_node("Mul", [x, x], list(node.output), name=node.name))
            count += 1
    return count


def constants_to_initializers(model: Any) -> int:
    """Turn ``Constant`` nodes into initializers (the rewrites read weights and axes from initializers).

    Returns the number of nodes converted; constants of kinds other than tensors and plain numbers stay nodes.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    keep, count = [], 0
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and not node.domain:
            attr = node.attribute[0]
            value = helper.get_attribute_value(attr)
            if attr.name == "value":
                array = numpy_helper.to_array(value)
            elif attr.name in ("value_float", "value_floats"):
                array = np.asarray(value, np.float32)
            elif attr.name in ("value_int", "value_ints"):
                array = np.asarray(value, np.int64)
            else:
                keep.append(node)
                continue
            graph.initializer.append(numpy_helper.from_array(array, node.output[0]))
            count += 1
        else:
            keep.append(node)
    if count:
        _set_nodes(graph, keep)
    return count


def _prune(model: Any) -> None:
    """Drop nodes and initializers no graph output depends on."""
    graph = model.graph
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    _set_nodes(graph, keep[::-1])
    live = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(live)


REWRITE_VERSION = 1
"""Bumped whenever a rewrite changes what it emits (old cached graphs are then ignored)."""


def cached_optimize_for_cpu(
    onnx_path: str, digest: str, cache_dir: Path | None
) -> tuple[bytes | None, dict[str, int]]:
    """:func:`optimize_for_cpu` through a cache of rewritten graphs keyed by the graph's sha256 ``digest``.

    Importing the ``onnx`` package alone takes 1.3-1.5 s on the 2-core development machine (most of a model's
    load time), so the rewritten graph is kept in ``cache_dir`` (``<digest>-v<REWRITE_VERSION>.onnx``, with a
    ``.json`` beside it holding the counts; a graph nothing matched is remembered by its ``.json`` alone) and
    later loads read the bytes without importing ``onnx``. ``cache_dir=None`` disables the cache. Cache files
    are written atomically; an unreadable or unwritable cache only costs time.

    Returns:
        As :func:`optimize_for_cpu`.
    """
    if cache_dir is None:
        return optimize_for_cpu(onnx_path)
    stem = Path(cache_dir) / f"{digest}-v{REWRITE_VERSION}"
    meta, graph = stem.with_suffix(".json"), stem.with_suffix(".onnx")
    try:
        counts = json.loads(meta.read_text(encoding="utf-8"))
        if not any(counts.values()):
            return None, counts
        return graph.read_bytes(), counts
    except (OSError, ValueError, AttributeError):
        pass
    data, counts = optimize_for_cpu(onnx_path)
    if not counts:  # the rewrite failed or onnx is missing: nothing to remember
        return data, counts
    from engine.bundle import atomic_write

    try:
        if data is not None:
            atomic_write(graph, data)
        atomic_write(meta, json.dumps(counts).encode())
    except OSError as exc:
        log.debug("cannot cache the rewritten graph in %s (%s)", cache_dir, exc)
    return data, counts


def optimize_for_cpu(onnx_path: str) -> tuple[bytes | None, dict[str, int]]:
    """Apply the rewrites to the model at ``onnx_path``.

    Returns:
        (serialised model bytes, {rewrite name: count}); bytes is ``None`` when nothing matched or the
        ``onnx`` package is missing (then load the file as it is).

    Raises:
        Nothing on a graph it cannot rewrite: such graphs are returned unchanged (``None``) and logged.
    """
    try:
        import onnx
    except ImportError:
        log.info("onnx not installed; ONNX Runtime runs %s as exported", onnx_path)
        return None, {}
    try:
        model = onnx.load(onnx_path)
        constants_to_initializers(model)
        model = onnx.shape_inference.infer_shapes(model)
        counts = {
            "mirrored_power_mel": mirrored_power_mel(model),
            "folded_dft_conv": fold_symmetric_frame_conv(model),
            "conv1d_as_conv2d": conv1d_as_conv2d(model),
            "channel_mean_as_conv": channel_mean_as_conv(model),
            "square_as_mul": square_as_mul(model),
        }
        if not any(counts.values()):
            return None, counts
        _prune(model)
        del model.graph.value_info[:]  # stale after the rewrites; ONNX Runtime infers its own
        onnx.checker.check_model(model)
        return model.SerializeToString(), counts
    except Exception as exc:  # noqa: BLE001 - any failure here must only cost speed, never the load
        log.warning("graph rewrite of %s skipped (%s: %s)", onnx_path, type(exc).__name__, exc)
        return None, {}
