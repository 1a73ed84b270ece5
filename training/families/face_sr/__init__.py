"""The face_sr family: 4x face super-resolution (64 -> 256 px), so a generated 64 px face shown large looks like a
picture, not pixels.

A small EDSR/ESPCN-style network (:mod:`.networks`) trained with an L1 loss on the real face crops of the
dataset folders (:mod:`.data`: the crop at the generator's 64 px, exactly as the generator was trained on it,
against the same crop at 256 px), split by distinct face crop exactly as the face generator's data
(:func:`training.data.dataset.validation_faces`: the same validation faces for the same ``val_fraction`` and
``seed``). No discriminator: the generic loop runs it without one.

Bundle input ``low_res`` float32 [B, 3, 64, 64] (RGB in [-1, 1]: a face generator's ``image`` output; ONNX
forbids an input and an output of the same name); output ``image`` float32 [B, 3, 256, 256] in [-1, 1]. ``family_info``: ``scale``, ``input_size``, ``output_size``.
The engine runs it after a face generator (:class:`engine.superres.SuperResolved`); ``run.py evaluate`` reports
its PSNR against bicubic upscaling on the validation crops (:mod:`.evaluate`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from training.families.contract import Family, GraphSource, InferenceGraph, Split, TensorSpec, TrainContext
from training.families.face_sr.config import FaceSRConfig


class SRInference(nn.Module):
    """The exported graph: :class:`.networks.FaceSRNet` with its output clipped to [-1, 1].

    Input ``low_res`` float32 [B, 3, h, w] in [-1, 1]; output ``image`` float32 [B, 3, scale*h, scale*w] in [-1, 1].
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, low_res: torch.Tensor) -> torch.Tensor:
        return self.net(low_res).clamp(-1.0, 1.0)


def _example_images(batch: int, gen: torch.Generator, size: int) -> tuple[torch.Tensor]:
    """Smooth random pictures in [-1, 1]: [batch, 3, size, size] (bilinear upscale of 8x8 noise)."""
    coarse = torch.rand((batch, 3, 8, 8), generator=gen) * 2 - 1
    return (torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False),)


class FaceSR(Family):
    """The face_sr :class:`~training.families.contract.Family`."""

    name = "face_sr"
    config_type = FaceSRConfig

    def load_data(self, cfg: FaceSRConfig, data_dirs: Sequence[str]):
        """:class:`.data.FaceCrops` of the folders (Wav2Pix or capture layout)."""
        from training.families.face_sr.data import load_crops

        return load_crops(list(data_dirs), cfg.model.input_size, cfg.model.scale)

    def split(self, cfg: FaceSRConfig, data) -> Split:
        """Face indices, by :func:`training.data.dataset.validation_faces` (the face generator's split)."""
        import numpy as np

        from training.data.dataset import validation_faces

        is_val = validation_faces(data.hashes, data.labels, cfg.train.val_fraction, cfg.train.seed)
        hashes = sorted(h for h, v in zip(data.hashes, is_val) if v)
        return Split(np.flatnonzero(~is_val), np.flatnonzero(is_val), {"val_face_hashes": hashes,
                                                                        "skipped": list(data.skipped)})  # fmt: skip

    def labels(self, data) -> list[str]:
        """The identity names (the split is stratified by them; the network does not use them)."""
        return list(data.identities)

    def build(self, cfg: FaceSRConfig, labels: Sequence[str]):
        """(:class:`.networks.FaceSRNet`, None): no discriminator."""
        from training.families.face_sr.networks import FaceSRNet

        return FaceSRNet(cfg.model), None

    def trainer(self, ctx: TrainContext):
        """:class:`.trainer.FaceSRTrainer`."""
        from training.families.face_sr.trainer import FaceSRTrainer

        return FaceSRTrainer(ctx)

    def inference(
        self, cfg: FaceSRConfig, G, labels: Sequence[str], source: GraphSource, options: argparse.Namespace
    ) -> InferenceGraph:
        """:class:`SRInference` for ``model.input_size`` px inputs."""
        s, k = cfg.model.input_size, cfg.model.scale
        return InferenceGraph(
            module=SRInference(G).eval(),
            inputs={"low_res": TensorSpec((None, 3, s, s), "RGB in [-1, 1] (a face generator's image output)")},
            outputs={"image": TensorSpec((None, 3, s * k, s * k), f"RGB in [-1, 1], {k}x the input's side")},
            sample_rate=0,
            family_info={"scale": k, "input_size": s, "output_size": s * k},
            example_inputs=lambda batch, gen: _example_images(batch, gen, s),
        )

    def add_evaluate_arguments(self, group: argparse._ArgumentGroup) -> None:
        """``--generated-by`` (:mod:`.evaluate`)."""
        from training.families.face_sr.evaluate import add_arguments

        add_arguments(group)

    def evaluate(self, model, args: argparse.Namespace) -> dict[str, Any]:
        """PSNR against bicubic on the validation crops (:func:`.evaluate.evaluate`)."""
        from training.families.face_sr.evaluate import evaluate

        return evaluate(model, args)

    def describe(self, cfg: FaceSRConfig) -> str:
        """Architecture line for ``TRAINING.md``."""
        m = cfg.model
        return (
            f"face_sr, {m.input_size} -> {m.input_size * m.scale} px ({m.scale}x), {m.channels} channels, "
            f"{m.blocks} residual blocks, sub-pixel upsampling over a bilinear skip"
        )


FAMILY = FaceSR()
