"""Shared fixtures.

* ``tiny_model`` — a randomly initialised wav2pix generator with a tiny config
  (64 px, g_channels 32, encoder_channels 16), its config and identity names.
* ``tiny_bundle`` — that model exported once per session with
  :func:`training.export.export_bundle` (self-check included) into a temporary
  folder; a :class:`pathlib.Path` to the bundle directory. Tests must not modify
  it: copy it (``shutil.copytree``) first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# No display or sound card in the test environment: pygame and SDL use their dummy drivers unless a test (or the
# caller) chooses otherwise (tests/xvfb.py passes an X server's own environment to the processes it starts).
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")

TINY_IDENTITIES = ["ana", "ben", "cleo"]
TINY_METRICS = {"fid": 123.4, "identity_accuracy": 0.5}


@dataclass(frozen=True)
class TinyModel:
    """A tiny random generator: ``net`` (Wav2PixGenerator, eval), ``cfg`` (Wav2PixConfig), ``identities``."""

    net: Any
    cfg: Any
    identities: list[str]

    def eager(self) -> Any:
        """The torch eager inference module (spectral norm baked), i.e. what was exported."""
        from training.export import bake_parametrizations
        from training.families.wav2pix.inference import Wav2PixInference

        return Wav2PixInference(bake_parametrizations(self.net)).eval()


def tiny_config() -> Any:
    """A fast 64 px wav2pix config (mel front end, 1 s at 16 kHz, no pose code)."""
    from training.families.wav2pix.config import ModelConfig, Wav2PixConfig

    return Wav2PixConfig(
        model=ModelConfig(
            g_channels=32, g_min_channels=16, d_channels=8, encoder_channels=16, embedding_dim=32, noise_dim=16,
            n_mels=32, pose_code_dim=0,
        )
    )  # fmt: skip


@pytest.fixture(scope="session")
def tiny_model() -> TinyModel:
    """See the module docstring."""
    import torch

    from training.families.wav2pix.networks import Wav2PixGenerator

    cfg = tiny_config()
    torch.manual_seed(0)
    net = Wav2PixGenerator(cfg.audio, cfg.model, len(TINY_IDENTITIES))
    net.train()
    with torch.no_grad():  # a few power iterations so the spectral-norm vectors are not at their init
        for _ in range(3):
            net(torch.randn(2, cfg.audio.window_samples) * 0.1, torch.randn(2, cfg.model.noise_dim))
    net.eval()
    return TinyModel(net=net, cfg=cfg, identities=list(TINY_IDENTITIES))


@pytest.fixture(scope="session")
def tiny_bundle(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """See the module docstring."""
    import torch

    from training.export import export_bundle

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return export_bundle(
            tiny_model.net,
            tiny_model.cfg,
            tiny_model.identities,
            tmp_path_factory.mktemp("bundle") / "tiny",
            training_info={"command": "run.py train tiny", "data": ["data/tiny"], "steps": 3, "wall_time_s": 1.5},
            metrics=dict(TINY_METRICS),
        )
    finally:
        torch.set_num_threads(threads)
