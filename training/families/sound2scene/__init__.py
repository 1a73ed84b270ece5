"""The sound2scene family: a sound -> the scene it belongs to (Wan, Chuang & Lee, "Towards Audio to Scene Image
Synthesis using Generative Adversarial Network", ICASSP 2019; Kang & Kymn, "Hearing is Seeing", 2017).

Bundle inputs: ``audio`` float32 [B, S] (raw samples in [-1, 1] at the bundle's sample rate), ``noise`` float32
[B, Z] (filled with seeded standard-normal noise when left out) and ``class`` float32 [B, C] (class weights in the
order of the bundle's ``labels``; filled with zeros, meaning "follow the sound", when left out; see
:class:`.inference.Sound2SceneInference`). Outputs: ``image`` float32 [B, 3, H, W] in [-1, 1] and
``class_probabilities`` float32 [B, C] (the audio encoder's softmax: what it hears). ``family_info``:
``gate: "sound"`` (the runtime gates generation with the sound-activity gate, suited to music and noise, instead
of the voice gate) and ``encoder`` (the audio encoder's report).

The audio encoder is trained first as a classifier of the training sounds and then **frozen** (the paper's
pretrained SoundNet role): with a few hundred clips the GAN's gradients would fit it to the training scenes and
move the embedding the discriminator projects on; frozen, its held-out accuracy is what the generator gets.

Modules: :mod:`.config`, :mod:`.data` (the dataset type and split), :mod:`.clips` and :mod:`.paired` (the two
importers), :mod:`.networks`, :mod:`.trainer`, :mod:`.inference` and :mod:`.evaluate`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from training.families.contract import Family, GraphSource, InferenceGraph, Split, TensorSpec, TrainContext
from training.families.sound2scene.config import Sound2SceneConfig


class Sound2Scene(Family):
    """The sound2scene :class:`~training.families.contract.Family`."""

    name = "sound2scene"
    config_type = Sound2SceneConfig

    def load_data(self, cfg: Sound2SceneConfig, data_dirs: Sequence[str]):
        """:class:`.data.SceneDataset` of the folders, by ``data.importer`` (:mod:`.clips` or :mod:`.paired`)."""
        if cfg.data.importer == "clips":
            from training.families.sound2scene.clips import load_clips

            return load_clips(list(data_dirs), cfg.audio.sample_rate, cfg.model.image_size, cfg.data.frame_rate,
                              cfg.audio.window_seconds)  # fmt: skip
        from training.families.sound2scene.paired import load_paired

        return load_paired(list(data_dirs), cfg.audio.sample_rate, cfg.model.image_size,
                           cfg.data.max_images_per_class, cfg.train.seed)  # fmt: skip

    def split(self, cfg: Sound2SceneConfig, data) -> Split:
        """By clip (``clips``) or by take and speaker (``paired``): :func:`.data.split`."""
        from training.families.sound2scene.data import split

        parts = split(data, cfg)
        return Split(parts.train_items, parts.val_items, parts.record)

    def labels(self, data) -> list[str]:
        """The class names (instrument folders, digits)."""
        return list(data.classes)

    def build(self, cfg: Sound2SceneConfig, labels: Sequence[str]):
        """(:class:`.networks.Sound2SceneGenerator`, :class:`.networks.Discriminator`)."""
        from training.families.sound2scene.networks import build

        return build(cfg.audio, cfg.model, len(labels), cfg.encoder.dropout)

    def trainer(self, ctx: TrainContext):
        """:class:`.trainer.Sound2SceneTrainer` (fits the audio encoder first on a fresh run)."""
        from training.families.sound2scene.trainer import Sound2SceneTrainer

        return Sound2SceneTrainer(ctx)

    def inference(
        self, cfg: Sound2SceneConfig, G, labels: Sequence[str], source: GraphSource, options: argparse.Namespace
    ) -> InferenceGraph:
        """:class:`.inference.Sound2SceneInference`: ``audio``, ``noise``, ``class`` -> ``image``."""
        from training.families.sound2scene.inference import Sound2SceneInference, example_inputs

        s, z, size, n = cfg.audio.window_samples, cfg.model.noise_dim, cfg.model.image_size, max(1, len(labels))
        info: dict[str, Any] = {"gate": "sound"}
        report = None
        if source.run_dir is not None and (source.run_dir / "audio_encoder.json").is_file():
            report = json.loads((source.run_dir / "audio_encoder.json").read_text())
        elif source.family_info is not None:
            report = source.family_info.get("encoder")
        info["encoder"] = report
        return InferenceGraph(
            module=Sound2SceneInference(G).eval(),
            inputs={
                "audio": TensorSpec((None, s), f"raw samples in [-1, 1] at {cfg.audio.sample_rate} Hz"),
                "noise": TensorSpec((None, z), "standard normal", fill="normal"),
                "class": TensorSpec(
                    (None, n), "class weights in the order of labels; all zero = follow the sound", fill="zeros"
                ),  # fmt: skip
            },
            outputs={
                "image": TensorSpec((None, 3, size, size), "RGB in [-1, 1]"),
                "class_probabilities": TensorSpec(
                    (None, n), "the audio encoder's class probabilities for audio (softmax, in the order of labels)"
                ),  # fmt: skip
            },
            sample_rate=cfg.audio.sample_rate,
            family_info=info,
            example_inputs=example_inputs(s, z, n),
        )

    def add_evaluate_arguments(self, group: argparse._ArgumentGroup) -> None:
        """The scene evaluation's flags (:mod:`.evaluate`)."""
        from training.families.sound2scene.evaluate import add_arguments

        add_arguments(group)

    def evaluate(self, model, args: argparse.Namespace) -> dict[str, Any]:
        """GAN-test accuracy, Fréchet distance, diversity, the volume test and a sample sheet (:mod:`.evaluate`)."""
        from training.families.sound2scene.evaluate import evaluate

        return evaluate(model, args)

    def describe(self, cfg: Sound2SceneConfig) -> str:
        """Architecture line for ``TRAINING.md``."""
        m = cfg.model
        return (
            f"sound2scene, {m.image_size} px, log-mel {m.n_mels} (n_fft {m.n_fft}, hop {m.hop}), encoder "
            f"{m.encoder_channels} channels -> embedding {m.embedding_dim} (trained {cfg.encoder.steps} steps as a "
            f"classifier, then frozen), noise {m.noise_dim}, generator {m.g_channels}->{m.g_min_channels} channels "
            f"with conditional normalisation, projection discriminator {m.d_channels} channels + auxiliary classifier"
        )


FAMILY = Sound2Scene()
