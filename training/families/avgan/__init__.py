"""The avgan family: one generator that makes an image and a one-second sound that belong together.

AVGAN (Dillig, Felger, Père & Weiß, Furtwangen 2019), after LMGAN (Chen et al. 2018): two convolutional streams
(image; sound as a GANSynth log-magnitude + instantaneous-frequency spectrogram image, Engel et al. 2019) share a
latent; the discriminator runs both streams and judges their concatenation, with matching-aware negatives (a real
image with another identity's real sound is fake) so that it learns that the two must belong together.

Bundle inputs: ``noise`` float32 [B, Z], and ``audio`` float32 [B, S] for ``voice``-conditioned models; outputs
``image`` float32 [B, 3, H, W] in [-1, 1] and ``sound`` float32 [B, N] in [-1, 1] at the bundle's sample rate
(the spectrogram inverse is inside the graph). ``family_info``: ``conditioning``, ``data_kind``, ``truncation``,
``spectrogram`` ({n_fft, hop, frames}).

Modules: :mod:`.config`, :mod:`.spectral` (the sound representation and its inverse), :mod:`.networks`,
:mod:`.data` (face pairs; FSDD + MNIST digits), :mod:`.trainer`, :mod:`.inference`, :mod:`.evaluate` (faces,
voices, agreement; digits), :mod:`.voices` (resemblyzer speaker embeddings), :mod:`.digits` (the digit
classifiers evaluation trains).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.errors import UserError
from training.families.avgan.config import AvganConfig
from training.families.contract import Family, GraphSource, InferenceGraph, Split, TensorSpec, TrainContext

log = logging.getLogger(__name__)


class Avgan(Family):
    """The avgan :class:`~training.families.contract.Family`."""

    name = "avgan"
    config_type = AvganConfig

    # -- data ---------------------------------------------------------------------------------------------
    def load_data(self, cfg: AvganConfig, data_dirs: Sequence[str]):
        """:class:`.data.FaceData` (``data.kind: faces``) or :class:`.data.DigitData` (``digits``)."""
        from training.families.avgan import data

        if cfg.data.kind == "digits":
            return data.load_digits(data_dirs, cfg.audio.sample_rate, cfg.audio.window_samples, cfg.model.image_size,
                                    cfg.train.val_fraction)  # fmt: skip
        if cfg.model.image_channels != 3:
            raise UserError("model.image_channels: face data is RGB; use 3 with data.kind: faces")
        from training.data import load_dataset

        pairs = load_dataset(list(data_dirs), cfg.audio.sample_rate, cfg.model.image_size)
        return data.FaceData(pairs, cfg.audio.window_samples)

    def split(self, cfg: AvganConfig, data) -> Split:
        """Faces: by distinct face crop; digits: FSDD's test takes and every n-th drawing."""
        if data.kind == "digits":
            train, val, record = data.split(cfg.train.val_fraction, cfg.train.seed, cfg.data.val_takes)
        else:
            train, val, record = data.split(cfg.train.val_fraction, cfg.train.seed)
        return Split(train, val, record)

    def labels(self, data) -> list[str]:
        """Identities (faces) or the digits "0" .. "9"."""
        return list(data.names)

    # -- networks and training ------------------------------------------------------------------------------
    def build(self, cfg: AvganConfig, labels: Sequence[str]):
        """(:class:`.networks.AvganGenerator`, :class:`.networks.AvganDiscriminator`)."""
        from training.families.avgan.networks import build

        return build(cfg, len(labels))

    def init_from_checkpoint(self, ctx: TrainContext, tensors: dict[str, Any], meta: dict[str, str]) -> int:
        """Continue another run's checkpoint under this config (``train --init-from``), e.g. at a lower learning
        rate or with other loss weights: the generator, its moving average, the discriminator and both Adam states
        carry over (the loop then sets the learning rates and betas from this config). The networks must be the
        same. Returns the checkpoint's step.

        Raises:
            UserError: another family or other labels, or networks that do not match the config (the message
                names the first tensors).
        """
        from training import runs

        old_cfg = runs.checkpoint_config(meta, "--init-from")
        if old_cfg.family != self.name:
            raise UserError(f"--init-from: cannot initialise an {self.name} model from a {old_cfg.family} one")
        old_labels = runs.checkpoint_labels(meta)
        if old_labels != list(ctx.labels):
            raise UserError(f"--init-from: trained on labels {old_labels}, the data has {list(ctx.labels)}")
        try:
            return runs.load_training_state(tensors, meta, ctx.G, ctx.G_ema, ctx.D, ctx.opt_g, ctx.opt_d)
        except RuntimeError as exc:
            detail = "; ".join(line.strip() for line in str(exc).splitlines()[:3])
            raise UserError(f"--init-from: the checkpoint's networks do not match the config ({detail})") from exc

    def init_from_bundle(self, ctx: TrainContext, bundle_dir: Path) -> None:
        """``model.image_stream: wav2pix``: take the speech encoder, its speaker head and the image stream over from
        a wav2pix bundle (``train --init-from BUNDLE``; both generator copies; kept fixed in training), red and blue
        put back in order for a bundle exported with ``swap_red_blue``. The trunk, the spectrogram stream and the
        discriminator start afresh, the run at step 0. The trained faces then come from the bundle's weights
        unchanged; the validation split is the same (both families split by distinct face crop with
        ``train.val_fraction`` and ``train.seed``; a bundle trained with others is refused, and one trained on other
        data folders gets a warning: this run's validation faces may have been its training faces).

        Raises:
            UserError: this config has its own image stream, or the bundle is not a readable wav2pix bundle with
                this config's audio settings, speech encoder, image stream widths, speakers and split.
        """
        from training import runs
        from training.export import load_bundle_source
        from training.families.avgan.networks import wav2pix_model_config

        cfg: AvganConfig = ctx.cfg
        if cfg.model.image_stream != "wav2pix":
            raise UserError(f"--init-from {bundle_dir}: an avgan run starts from a bundle only with "
                            "model.image_stream: wav2pix (a run's checkpoint continues any avgan run)")  # fmt: skip
        source = load_bundle_source(Path(bundle_dir))
        if source.family.name != "wav2pix":
            raise UserError(f"--init-from {bundle_dir}: model.image_stream: wav2pix takes a wav2pix bundle, "
                            f"this one is {source.family.name}")  # fmt: skip
        old_cfg = source.cfg
        want = wav2pix_model_config(cfg)
        if old_cfg.model.front_end != "mel":
            raise UserError(f"--init-from {bundle_dir}: its speech encoder reads the raw waveform (model.front_end: "
                            f"{old_cfg.model.front_end}); avgan's is a log-mel encoder")  # fmt: skip
        for key in ("n_fft", "hop", "n_mels", "embedding_dim", "noise_dim", "image_size", "g_channels",
                    "g_min_channels", "encoder_channels", "spectral_norm_g"):  # fmt: skip
            a, b = getattr(old_cfg.model, key), getattr(want, key)
            if a != b:
                raise UserError(f"--init-from {bundle_dir}: its model.{key} is {a!r}, this config's image stream "
                                f"needs {b!r} (model.{'image_' if key.startswith('g_') else ''}{key})")  # fmt: skip
        if old_cfg.audio != cfg.audio:
            raise UserError(f"--init-from {bundle_dir}: its audio settings {old_cfg.audio} differ from this config's "
                            f"{cfg.audio}")  # fmt: skip
        for key in ("val_fraction", "seed"):
            if getattr(old_cfg.train, key) != getattr(cfg.train, key):
                raise UserError(f"--init-from {bundle_dir}: trained with train.{key} {getattr(old_cfg.train, key)}, "
                                f"this config has {getattr(cfg.train, key)}: its validation faces would not be this "
                                "run's")  # fmt: skip
        if list(source.labels) != list(ctx.labels):
            raise UserError(f"--init-from {bundle_dir}: trained on speakers {list(source.labels)}, the data has "
                            f"{list(ctx.labels)}")  # fmt: skip
        trained_on = [str(Path(d).resolve()) for d in (source.manifest.get("training") or {}).get("data") or []]
        here = (runs.read_split(ctx.run_dir) or {}).get("data", [])
        if trained_on and sorted(trained_on) != sorted(str(Path(d).resolve()) for d in here):
            log.warning("--init-from %s: the bundle was trained on %s, this run reads %s: its validation faces may "
                        "have been the bundle's training faces", bundle_dir, trained_on, here)  # fmt: skip
        old = source.G
        if (source.manifest.get("family_info") or {}).get("swap_red_blue"):
            from training.families.wav2pix.networks import swap_red_blue

            swap_red_blue(old)  # its weights draw blue, green, red; this run's faces are RGB
        for G in (ctx.G, ctx.G_ema):
            G.encoder.load_state_dict(old.encoder.state_dict())
            G.speaker_head.load_state_dict(old.speech_classifier.state_dict())
            G.image.load_state_dict(old.generator.state_dict())
        ctx.G.image_stream_from = str(bundle_dir)

    def trainer(self, ctx: TrainContext):
        """:class:`.trainer.AvganTrainer`."""
        from training.families.avgan.trainer import AvganTrainer

        return AvganTrainer(ctx)

    # -- export and evaluation ------------------------------------------------------------------------------
    def add_export_arguments(self, group: argparse._ArgumentGroup) -> None:
        """``--truncation`` (the same flag, and meaning, as wav2pix's)."""
        group.add_argument(
            "--truncation", type=float, default=1.0, metavar="PSI",
            help="noise scale inside the graph (truncation trick, Brock et al. 2019; default 1.0 = none)",
        )  # fmt: skip

    def inference(
        self, cfg: AvganConfig, G, labels: Sequence[str], source: GraphSource, options: argparse.Namespace
    ) -> InferenceGraph:
        """:class:`.inference.VoiceInference` or :class:`.inference.NoiseInference`."""
        from training.families.avgan.inference import NoiseInference, VoiceInference

        truncation = float(getattr(options, "truncation", 1.0))
        m, rate = cfg.model, cfg.audio.sample_rate
        n = cfg.audio.window_samples
        noise = TensorSpec((None, m.noise_dim), "standard normal", fill="normal")
        if m.conditioning == "voice":
            module: Any = VoiceInference(G, truncation)
            inputs = {"audio": TensorSpec((None, n), f"raw speech in [-1, 1] at {rate} Hz"), "noise": noise}
        else:
            module = NoiseInference(G, truncation)
            inputs = {"noise": noise}
        s = cfg.spectrogram
        return InferenceGraph(
            module=module.eval(),
            inputs=inputs,
            outputs={
                "image": TensorSpec((None, 3, m.image_size, m.image_size), "RGB in [-1, 1]"),
                "sound": TensorSpec((None, n), f"waveform in [-1, 1] at {rate} Hz"),
            },
            sample_rate=rate,
            family_info={
                "conditioning": m.conditioning,
                "data_kind": cfg.data.kind,
                "truncation": truncation,
                "spectrogram": {"n_fft": s.n_fft, "hop": s.hop, "frames": s.frames},
            },
        )

    def add_evaluate_arguments(self, group: argparse._ArgumentGroup) -> None:
        """``--count`` (samples of an unconditional model) and ``--wavs`` (WAVs beside the sample sheet)."""
        from training.families.avgan.evaluate import add_arguments

        add_arguments(group)

    def evaluate(self, model, args: argparse.Namespace) -> dict[str, Any]:
        """Faces + voices + agreement (``faces``) or digit agreement (``digits``): :mod:`.evaluate`."""
        from training.families.avgan.evaluate import evaluate

        return evaluate(model, args)

    def describe(self, cfg: AvganConfig) -> str:
        """Architecture line for ``TRAINING.md``."""
        m, s = cfg.model, cfg.spectrogram
        return (
            f"avgan ({m.conditioning} conditioning, {cfg.data.kind}), image {m.image_size} px x {m.image_channels} ch, "
            f"sound {cfg.audio.window_seconds:g} s at {cfg.audio.sample_rate} Hz as a (2, {s.n_fft // 2}, {s.frames}) "
            f"log-magnitude + IF spectrogram (n_fft {s.n_fft}, hop {s.hop}), noise {m.noise_dim}, trunk {m.trunk_width}, "
            f"g_channels {m.g_channels} (min {m.g_min_channels}), d_channels {m.d_channels}, joint {m.joint_width}"
            + (f", image stream g_channels {m.image_g_channels or m.g_channels} (min "
               f"{m.image_g_min_channels or m.g_min_channels})" if m.image_g_channels or m.image_g_min_channels else "")
            + (f", spectrogram discriminator width {m.spec_d_channels}" if m.spec_d_channels else "")
            + (", a categorical latent code over the labels (model.latent_code)" if m.latent_code else "")
            + (", per-stream speaker classifiers in the discriminator (model.stream_classifiers)"
               if m.stream_classifiers else "")
            + (", the spectrogram stream over time with the bins as channels (model.spec_stream: conv1d)"
               if m.spec_stream == "conv1d" else "")
            + (f", {m.spec_top_blocks} full-resolution block(s) in the spectrogram stream (model.spec_top_blocks)"
               if m.spec_top_blocks else "")
            + (", the minibatch standard deviation in the discriminator (model.minibatch_std)" if m.minibatch_std else "")
            + (", image stream and speech encoder a wav2pix generator's (taken over from a wav2pix bundle, kept fixed: "
               "model.image_stream)" if m.image_stream == "wav2pix" else "")
        )  # fmt: skip


FAMILY = Avgan()
