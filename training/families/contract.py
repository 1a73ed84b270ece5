"""The model-family contract: what a family says, and what the shared code does with it.

The split follows NVlabs' stylegan3 (``training_loop(G_kwargs, D_kwargs, loss_kwargs, ...)`` with
``Loss.accumulate_gradients``): the generic loop (:mod:`training.loop`) owns devices, torchrun DDP, bf16
autocast, the generator's moving average, checkpoints, resume, the JSONL log, the loss plot, sample grids and
the progress bar; a family owns its config, data, networks, one training step, the exported inference graph
with named inputs and outputs, and its evaluation.

What a family provides (subclass :class:`Family`; the methods that raise by default are optional):

=====================  ==============================================================================
``name``, ``config_type``  the family's name and its frozen config dataclass (fields ``family``, ``train``
                       (:class:`training.config.TrainConfig`) and its own sections)
``load_data``          dataset folders -> the family's dataset object
``split``              dataset -> :class:`Split` (train / validation indices, a JSON record for split.json)
``labels``             dataset -> class names (speakers, scene classes; index = label)
``build``              (config, labels) -> (generator side, discriminator): the generator side is everything
                       the generator's optimiser trains and the moving average copies; the discriminator is
                       ``None`` for a family trained without one (face_sr: a pixel loss)
``trainer``            :class:`TrainContext` -> :class:`Trainer` (one alternating D/G update per call)
``inference``          (config, generator, labels, :class:`GraphSource`, options) -> :class:`InferenceGraph`
``evaluate``           (:class:`Model`, args) -> figures (a JSON-able dict)
=====================  ==============================================================================

A bundle's inputs and outputs are named (``docs/CONTRACTS.md``); the runtime (engine, scenes, live, render)
reads those names and never asks which family made the bundle:

========== ============================================ ==========================================
family     inputs                                        outputs
========== ============================================ ==========================================
wav2pix    ``audio`` [B, S], ``noise`` [B, Z]            ``image`` [B, 3, H, W]
sound2scene ``audio`` [B, S] and/or ``class`` [B, C],    ``image``
           ``noise``
avgan      ``audio`` [B, S] (conditioned models only),   ``image``, ``sound`` [B, N] (waveform in
           ``noise``                                     [-1, 1] at the bundle's sample rate)
========== ============================================ ==========================================
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn

Shape = tuple[int | None, ...]
"""A tensor shape with ``None`` for the batch axis, e.g. ``(None, 16000)``."""

#: how the engine fills an input the caller leaves out (``docs/CONTRACTS.md``): seeded standard-normal noise,
#: zeros, or nothing (the input is required)
FILLS = ("normal", "zeros", "required")


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output of an inference graph.

    Attributes:
        shape: float32 tensor shape, ``None`` on the batch axis (axis 0).
        doc: what it holds, with units (e.g. "raw samples in [-1, 1] at sample_rate Hz").
        fill: inputs only: how the engine fills it when the caller leaves it out (:data:`FILLS`).
    """

    shape: Shape
    doc: str = ""
    fill: str = "required"

    def __post_init__(self) -> None:
        if self.fill not in FILLS:
            raise ValueError(f"fill: expected one of {', '.join(FILLS)}, got {self.fill!r}")
        if not self.shape or self.shape[0] is not None or any(d is None or d < 1 for d in self.shape[1:]):
            raise ValueError(f"shape: expected (None, n1, n2, ...) with positive sizes, got {self.shape}")


@dataclass
class InferenceGraph:
    """What a family exports: the module and the names, shapes and metadata of its inputs and outputs.

    Attributes:
        module: ``forward(*inputs)`` taking float32 tensors in the order of :attr:`inputs` and returning one
            tensor (one output) or a tuple in the order of :attr:`outputs`. Feature extraction and every
            run-time mapping (e.g. a pose prior) belong inside it, so every backend computes the same thing.
        inputs / outputs: name -> :class:`TensorSpec`, in the module's order.
        sample_rate: Hz of the ``audio`` input and of a ``sound`` output.
        family_info: family-specific manifest keys (JSON-able), kept under ``family_info`` in ``bundle.json``.
        extra_tensors: run-time tensors that are not the generator's state (e.g. a retrieval bank), saved in
            ``generator.safetensors`` next to it under keys the family chooses (prefixed, so they never
            collide with the state dict).
        example_inputs: ``(batch, torch.Generator) -> tuple of tensors`` for tracing and the self-check
            (default: :func:`example_inputs`).
    """

    module: nn.Module
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    sample_rate: int
    family_info: dict[str, Any] = field(default_factory=dict)
    extra_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    example_inputs: Callable[[int, torch.Generator], tuple[torch.Tensor, ...]] | None = None

    def examples(self, batch: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """Example inputs for a batch of ``batch`` (deterministic for ``seed``)."""
        import torch

        gen = torch.Generator().manual_seed(seed)
        if self.example_inputs is not None:
            return self.example_inputs(batch, gen)
        return tuple(example_input(name, spec.shape, batch, gen) for name, spec in self.inputs.items())


def example_input(name: str, shape: Shape, batch: int, gen: torch.Generator) -> torch.Tensor:
    """A plausible float32 input: ``audio`` uniform in [-0.5, 0.5], ``class`` a probability vector, else N(0, 1)."""
    import torch

    size = (batch, *[int(d) for d in shape[1:]])
    if name == "audio":
        return (torch.rand(size, generator=gen) * 2 - 1) * 0.5
    if name == "class":
        return torch.softmax(torch.randn(size, generator=gen) * 3, dim=-1)
    return torch.randn(size, generator=gen)


@dataclass(frozen=True)
class Split:
    """Training and validation items of a dataset.

    Attributes:
        train, val: int64 [N] indices into the dataset's items (pairs, frames, ...).
        record: JSON-able facts for ``RUN_DIR/split.json`` (e.g. the validation face hashes), so evaluation
            later uses exactly this split.
    """

    train: np.ndarray
    val: np.ndarray
    record: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GraphSource:
    """Where a generator to export (or evaluate in-process) comes from.

    Attributes:
        run_dir: the training run folder (run-time state such as fitted codes lives there), or None.
        data: the training data folders (from ``split.json`` or a bundle's training record).
        split: the run's ``split.json`` content, or None.
        bundle_tensors: for a bundle exported again: the tensors of its ``generator.safetensors`` that are not
            the generator's state (:attr:`InferenceGraph.extra_tensors` of the earlier export), else None.
        family_info: for a bundle exported again: its manifest's ``family_info``, else None.
        for_export: True for ``run.py export`` (a bundle is written), False for an in-process graph
            (``evaluate`` of a run folder); a family may choose costlier defaults for the former.
    """

    run_dir: Path | None = None
    data: tuple[str, ...] = ()
    split: dict[str, Any] | None = None
    bundle_tensors: dict[str, torch.Tensor] | None = None
    family_info: dict[str, Any] | None = None
    for_export: bool = False


@dataclass
class TrainContext:
    """What the generic loop hands a family's :meth:`Family.trainer`.

    Attributes:
        cfg: the family config. run_dir: the run folder. device: torch device of this process.
        rank, world: torchrun's process rank and count (0, 1 without torchrun). main: ``rank == 0``.
        G, D, G_ema: generator side, discriminator (``None`` for a family without one), and the generator's
            moving average (eval mode).
        opt_g, opt_d: their Adam optimisers (``opt_d`` ``None`` without a discriminator).
        data: the family's dataset. split: its :class:`Split`. labels: class names.
        step: the generator step training starts at (0, or the resumed one).
        all_reduce: ``all_reduce(params)`` averages the gradients of ``params`` over the processes (no-op
            with one); call it between ``backward`` and ``optimizer.step``.
        autocast: ``autocast()`` is the context for forward passes (bf16 under ``train.precision: bf16``).
        barrier: waits for every process (no-op with one).
    """

    cfg: Any
    run_dir: Path
    device: torch.device
    rank: int
    world: int
    G: nn.Module
    D: nn.Module | None
    G_ema: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer | None
    data: Any
    split: Split
    labels: list[str]
    step: int
    all_reduce: Callable[[Sequence[torch.nn.Parameter]], None]
    autocast: Callable[[], AbstractContextManager]
    barrier: Callable[[], None]

    @property
    def main(self) -> bool:
        """Whether this is the process that writes files (rank 0)."""
        return self.rank == 0

    def optimise(self, opt: torch.optim.Optimizer, loss: torch.Tensor, params: Sequence[torch.nn.Parameter]) -> None:
        """One step of ``opt`` on the scalar ``loss``: clear the gradients, backpropagate, average the gradients
        of ``params`` over the processes (:attr:`all_reduce`), step."""
        opt.zero_grad(set_to_none=True)
        loss.backward()
        self.all_reduce(params)
        opt.step()


@dataclass
class Model:
    """A model to evaluate, as the engine would run it (:func:`training.evaluate.open_model` makes one).

    Attributes:
        name: the bundle's or run folder's name. kind: ``"bundle"`` or ``"run"``.
        family, cfg: the model family and its config. labels: class names (index = label).
        sample_rate: Hz of the ``audio`` input and ``sound`` output.
        inputs, outputs: name -> shape with ``None`` for the batch axis.
        run: ``run(**inputs) -> {output name: float32 array}`` (e.g. ``image`` [B, 3, H, W] in [-1, 1]), in
            batches of at most 64; inputs as the engine's :meth:`engine.generator.Generator.run` takes them.
        info: facts for the report (bundle path, backend, checkpoint, step, ...).
        split: a run's ``split.json`` (the recorded split evaluation must use), or None for a bundle.
    """

    name: str
    kind: str
    family: Family
    cfg: Any
    labels: list[str]
    sample_rate: int
    inputs: dict[str, tuple[int | None, ...]]
    outputs: dict[str, tuple[int | None, ...]]
    run: Callable[..., dict[str, np.ndarray]]
    info: dict[str, Any] = field(default_factory=dict)
    split: dict[str, Any] | None = None


class Trainer(Protocol):
    """A family's training step, made once per run by :meth:`Family.trainer`."""

    def step(self, step: int, update_g: bool) -> dict[str, float]:
        """One discriminator update and, with ``update_g``, one generator update, on a batch the trainer draws.

        Returns floats for the log; ``loss_g`` is required (NaN without ``update_g``), and ``loss_d`` for a family
        with a discriminator; every ``loss_*`` key is plotted.
        """
        ...

    def sample_grid(self) -> np.ndarray | None:
        """uint8 [H, W, 3]: fixed validation inputs through ``G_ema`` (written as ``samples/step-N.png``)."""
        ...

    def on_checkpoint(self) -> None:
        """Called (on every rank) after each checkpoint is written: save run-time state that trains along."""
        ...


class Family:
    """Base class of a model family (see the module docstring). Optional hooks raise ``NotImplementedError``."""

    name: str = ""
    config_type: type = object

    # -- data ---------------------------------------------------------------------------------------------
    def load_data(self, cfg: Any, data_dirs: Sequence[str]) -> Any:
        """Decode the dataset folders (cached where the family can).

        Raises:
            engine.errors.UserError: a missing or unreadable folder, or one with nothing to train on.
        """
        raise NotImplementedError

    def split(self, cfg: Any, data: Any) -> Split:
        """Train / validation split of ``data`` by ``cfg.train.val_fraction`` and ``cfg.train.seed``."""
        raise NotImplementedError

    def labels(self, data: Any) -> list[str]:
        """Class names of ``data`` (index = label)."""
        raise NotImplementedError

    # -- networks and training ------------------------------------------------------------------------------
    def build(self, cfg: Any, labels: Sequence[str]) -> tuple[nn.Module, nn.Module | None]:
        """Fresh (generator side, discriminator) for ``labels``; the discriminator is ``None`` for a family trained
        without one."""
        raise NotImplementedError

    def trainer(self, ctx: TrainContext) -> Trainer:
        """The run's :class:`Trainer`."""
        raise NotImplementedError

    def init_from_checkpoint(self, ctx: TrainContext, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> int:
        """Start a new run from another run's checkpoint (``train --init-from``); returns its step.

        Raises:
            engine.errors.UserError: the checkpoint cannot initialise this config (the message says why).
        """
        from engine.errors import UserError

        raise UserError(f"the {self.name} family cannot start a run from another run's checkpoint")

    def init_from_bundle(self, ctx: TrainContext, bundle_dir: Path) -> None:
        """Start a new run (step 0, new discriminator) from a model bundle's generator (``train --init-from``).

        Raises:
            engine.errors.UserError: the bundle cannot initialise this config.
        """
        from engine.errors import UserError

        raise UserError(f"the {self.name} family cannot start a run from a model bundle")

    # -- export and evaluation ------------------------------------------------------------------------------
    def add_export_arguments(self, group: argparse._ArgumentGroup) -> None:
        """Family-specific flags of ``run.py export`` (and of ``evaluate`` on a run folder); default none."""

    def inference(
        self, cfg: Any, G: nn.Module, labels: Sequence[str], source: GraphSource, options: argparse.Namespace
    ) -> InferenceGraph:
        """The exported graph of generator side ``G`` (eval mode, parametrizations baked).

        ``options`` holds the flags of :meth:`add_export_arguments` (absent ones take their defaults).
        """
        raise NotImplementedError

    def add_evaluate_arguments(self, group: argparse._ArgumentGroup) -> None:
        """Family-specific flags of ``run.py evaluate``; default none."""

    def evaluate(self, model: Model, args: argparse.Namespace) -> dict[str, Any]:
        """Evaluate ``model`` on ``args.data``; writes its files under ``args.out``; returns the figures.

        Raises:
            engine.errors.UserError: bad data or arguments.
        """
        from engine.errors import UserError

        raise UserError(f"the {self.name} family has no evaluation")

    def describe(self, cfg: Any) -> str:
        """One line about the architecture for ``TRAINING.md``."""
        return self.name
