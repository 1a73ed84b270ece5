"""The wav2pix family: speech -> face (Duarte et al., "Wav2Pix: Speech-conditioned Face Generation using
Generative Adversarial Networks", ICASSP 2019), the shipped default model.

Bundle inputs ``audio`` float32 [B, S] (raw samples in [-1, 1] at the bundle's sample rate) and ``noise``
float32 [B, Z]; output ``image`` float32 [B, 3, H, W] in [-1, 1], RGB. ``family_info`` in ``bundle.json``:
``truncation`` (psi), ``pose_code_dim`` (K), ``pose_prior`` ("neighbours" or "normal"), ``pose_prior_fit``
(the neighbours bank's figures and calibration, or null) and ``swap_red_blue`` (true: the generator's weights
draw blue, green, red, having been trained on faces read with red and blue swapped, and the graph exchanges them;
absent or false: the weights draw RGB).

Colour order: the data loader gives true RGB faces (each folder's channel order, :mod:`datastore.images`), so a
model trained now draws RGB and exports with ``swap_red_blue`` false. Models trained before the loader read the
channel order (the shipped default among them) learnt the Wav2Pix crops as stored, red and blue swapped; they are
exported with ``--swap-red-blue`` (a bundle exported again keeps its setting), and a fine-tuning run started from
such a bundle swaps the weights first (:func:`.networks.swap_red_blue`), so ``generator.safetensors`` always holds
the weights as trained.

Modules: :mod:`.config` (the config), :mod:`.networks` (encoder, generator, discriminator, Net2WiderNet growth),
:mod:`.landmarks` (pose code, landmark CNN and its teacher), :mod:`.prior` (the neighbours pose prior),
:mod:`.bank_calibration`, :mod:`.trainer` (the training step), :mod:`.inference` (the exported graph) and
:mod:`.evaluate` (face metrics).
"""

from __future__ import annotations

import argparse
import copy
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from engine.configs import finite_float
from engine.errors import UserError
from training.families.contract import Family, GraphSource, InferenceGraph, Split, TensorSpec, TrainContext
from training.families.wav2pix.config import Wav2PixConfig

log = logging.getLogger(__name__)

POSE_PRIOR_PREFIX = "pose_prior."
"""Keys of the neighbours prior's buffers in a bundle's ``generator.safetensors``."""
POSE_PRIORS = ("neighbours", "normal")


class Wav2Pix(Family):
    """The wav2pix :class:`~training.families.contract.Family`."""

    name = "wav2pix"
    config_type = Wav2PixConfig

    # -- data ---------------------------------------------------------------------------------------------
    def load_data(self, cfg: Wav2PixConfig, data_dirs: Sequence[str]):
        """:class:`training.data.PairDataset` of the folders (Wav2Pix or capture layout), faces at the model's size."""
        from training.data import load_dataset

        return load_dataset(list(data_dirs), cfg.audio.sample_rate, cfg.model.image_size)

    def split(self, cfg: Wav2PixConfig, data) -> Split:
        """By distinct face crop (:func:`training.data.split_by_face`); the record keeps the validation hashes."""
        from training.data import split_by_face

        train, val = split_by_face(data, cfg.train.val_fraction, cfg.train.seed)
        hashes = sorted({data.face_hashes[f] for f in data.face_index[val]})
        return Split(train, val, {"val_face_hashes": hashes, "skipped": list(data.skipped)})

    def labels(self, data) -> list[str]:
        """The identity names (one folder or capture participant each)."""
        return list(data.identities)

    # -- networks and training ------------------------------------------------------------------------------
    def build(self, cfg: Wav2PixConfig, labels: Sequence[str]):
        """(:class:`.networks.Wav2PixGenerator`, :class:`.networks.Discriminator`) for ``labels`` identities."""
        from training.families.wav2pix.networks import build

        return build(cfg.audio, cfg.model, len(labels))

    def trainer(self, ctx: TrainContext):
        """:class:`.trainer.Wav2PixTrainer`."""
        from training.families.wav2pix.trainer import Wav2PixTrainer

        return Wav2PixTrainer(ctx)

    def init_from_checkpoint(self, ctx: TrainContext, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> int:
        """Another run's checkpoint, its generator widened where the config asks for more channels (Net2WiderNet,
        :func:`.networks.widen_from`, the same noise seed for the trained and the moving-average generator); its
        discriminator and Adam state carry over (a pose projection the old one lacks starts at zero, with empty
        Adam state); the generator's Adam state does not (its shapes change). Returns the checkpoint's step.

        Raises:
            UserError: other identities, another family, or shapes that cannot be mapped (names the tensor).
        """
        from training import runs
        from training.families.wav2pix.networks import discriminator_state_from, widen_from

        old_cfg = runs.checkpoint_config(meta, "--init-from")
        old_ids = runs.checkpoint_labels(meta)
        if old_ids != list(ctx.labels):
            raise UserError(f"--init-from: trained on identities {old_ids}, the data has {list(ctx.labels)}")
        if old_cfg.family != self.name:
            raise UserError(f"--init-from: cannot initialise a {self.name} model from a {old_cfg.family} one")
        for prefix, target in (("G", ctx.G), ("G_ema", ctx.G_ema)):
            old, _ = self.build(old_cfg, old_ids)
            old.load_state_dict(runs.sub_state(tensors, prefix))
            try:
                widen_from(target, old.to(ctx.device), seed=ctx.cfg.train.seed)
            except ValueError as exc:
                raise UserError(f"--init-from: {prefix}: {exc}") from exc
        try:
            d_state, extended = discriminator_state_from(ctx.D, runs.sub_state(tensors, "D"))
            ctx.D.load_state_dict(d_state)
        except (ValueError, RuntimeError) as exc:
            raise UserError(f"--init-from: discriminator does not match the config ({exc})") from exc
        opt_state = runs.unflatten_optimizer("opt_d", tensors, meta["opt_d_groups"])
        n_params, group = len(list(ctx.D.parameters())), opt_state["param_groups"][0]
        new_params = [n for n, _ in ctx.D.named_parameters()][len(group["params"]) :]
        if new_params and all(n in extended for n in new_params):  # the pose projection, registered last
            group["params"] = list(range(n_params))  # its Adam state starts empty
        ctx.opt_d.load_state_dict(opt_state)
        return int(meta["step"])

    def init_from_bundle(self, ctx: TrainContext, bundle_dir: Path) -> None:
        """Fine-tune a model bundle's generator (``generator.safetensors``): both the trained and the moving-average
        generator get its weights (widened where the config asks for more channels); the discriminator starts
        afresh (give it ``train.d_warmup_steps``) and the run at step 0. Data with other identities than the
        bundle's (a capture session's visitors) is accepted with a warning: everything but the speech identity
        head (one output per identity) is taken over.

        Raises:
            UserError: not a readable wav2pix bundle, or shapes that cannot be mapped (names the tensor).
        """
        from training.export import load_bundle_source
        from training.families.wav2pix.networks import widen_from

        source = load_bundle_source(bundle_dir)
        if source.family.name != self.name:
            raise UserError(f"{bundle_dir}: cannot initialise a {self.name} model from a {source.family.name} one")
        old = source.G
        if (source.manifest.get("family_info") or {}).get("swap_red_blue"):
            from training.families.wav2pix.networks import swap_red_blue

            swap_red_blue(old)  # trained on red and blue swapped: the data now comes in true RGB order
        if list(source.labels) != list(ctx.labels):
            log.warning("%s: trained on identities %s, the data has %s; the speech identity head starts afresh",
                        bundle_dir, list(source.labels), list(ctx.labels))  # fmt: skip
            old.speech_classifier = copy.deepcopy(ctx.G.speech_classifier).cpu()
        for name, target in (("G", ctx.G), ("G_ema", ctx.G_ema)):
            try:
                widen_from(target, old.to(ctx.device), seed=ctx.cfg.train.seed)
            except ValueError as exc:
                raise UserError(f"{bundle_dir}: {name}: {exc}") from exc

    # -- export and evaluation ------------------------------------------------------------------------------
    def add_export_arguments(self, group: argparse._ArgumentGroup) -> None:
        """``--truncation``, ``--pose-prior``, ``--calibrate-bank``, ``--swap-red-blue``."""
        group.add_argument(
            "--truncation", type=finite_float, default=1.0, metavar="PSI",
            help="noise scale inside the graph (truncation trick, Brock et al. 2019; default 1.0 = none)",
        )  # fmt: skip
        group.add_argument(
            "--pose-prior", choices=POSE_PRIORS, default="neighbours",
            help="for a generator with a pose code: the code of one of the 16 training pairs whose speech embeddings "
            "are nearest to the voice's (neighbours, the default; reads the run's training data), or "
            "standard-normal noise as it is (normal)",
        )  # fmt: skip
        group.add_argument(
            "--calibrate-bank", action=argparse.BooleanOptionalAction, default=None,
            help="per training identity, scale the neighbours bank's codes and keep the share of its rows the "
            "generator draws best, chosen by the Fréchet distance of the bank's renderings to the real training "
            "faces (training data only; ~0.13 s per bank row and gain on a CPU). Default: on for `export` of a run "
            "(the shipped recipe), off for `evaluate` of a run and for a bundle exported again",
        )  # fmt: skip
        group.add_argument(
            "--swap-red-blue", action=argparse.BooleanOptionalAction, default=None,
            help="for a generator trained on faces read with red and blue swapped (Wav2Pix data before the loader "
            "read each folder's channel order): exchange its red and blue outputs inside the graph (exact), so the "
            "bundle draws RGB. Default: off for a run, the bundle's own setting for a bundle exported again",
        )  # fmt: skip

    def inference(
        self, cfg: Wav2PixConfig, G, labels: Sequence[str], source: GraphSource, options: argparse.Namespace
    ) -> InferenceGraph:
        """:class:`.inference.Wav2PixInference` with the neighbours prior (built from the run's pose codes and
        training data, or taken from the bundle being exported again), calibrated when asked."""
        from training.families.wav2pix.inference import Wav2PixInference
        from training.families.wav2pix.prior import NeighbourPosePrior

        truncation = float(getattr(options, "truncation", 1.0))
        swap = bool(getattr(options, "swap_red_blue", None))
        if swap:  # G is the exporter's baked copy: swapping it in place changes nothing the caller holds
            from training.families.wav2pix.networks import swap_red_blue

            swap_red_blue(G)
        kind = getattr(options, "pose_prior", "neighbours")
        calibrate = getattr(options, "calibrate_bank", None)
        prior = None
        if kind not in POSE_PRIORS:
            raise UserError(f"pose prior {kind!r} was removed (it never improved the shipped model); this version "
                            f"exports {' or '.join(POSE_PRIORS)} (git history has the code that made it)")  # fmt: skip
        if cfg.model.pose_code_dim and kind == "neighbours":
            if source.bundle_tensors is not None:
                state = {k[len(POSE_PRIOR_PREFIX) :]: v for k, v in source.bundle_tensors.items()
                         if k.startswith(POSE_PRIOR_PREFIX)}  # fmt: skip
                if state:
                    try:
                        prior = NeighbourPosePrior.from_state_dict(state)
                    except ValueError as err:
                        raise UserError(f"the bundle's pose prior: {err}") from err
                    prior.fit_report = (source.family_info or {}).get("pose_prior_fit")
            elif source.run_dir is not None:
                from training.families.wav2pix.prior import POSE_CODES_FILE, neighbour_prior_for_run
                from training.families.wav2pix.trainer import read_pose_codes

                codes, _ = read_pose_codes(source.run_dir / POSE_CODES_FILE)
                prior = neighbour_prior_for_run(source.run_dir, cfg, codes, G, source.data)
                if calibrate is None:
                    calibrate = source.for_export
        if calibrate:
            prior = self._calibrated(prior, G, cfg, labels, source)
        module = Wav2PixInference(G, truncation, prior).eval()
        s, z, size = cfg.audio.window_samples, cfg.model.noise_dim, cfg.model.image_size
        return InferenceGraph(
            module=module,
            inputs={
                "audio": TensorSpec((None, s), f"raw samples in [-1, 1] at {cfg.audio.sample_rate} Hz"),
                "noise": TensorSpec((None, z), "standard normal", fill="normal"),
            },
            outputs={"image": TensorSpec((None, 3, size, size), "RGB in [-1, 1]")},
            sample_rate=cfg.audio.sample_rate,
            family_info={
                "truncation": truncation,
                # the first pose_code_dim noise inputs are a pose code (landmarks.PoseCodes); 0: none
                "pose_code_dim": cfg.model.pose_code_dim,
                # how standard-normal noise becomes that code in the graph: "neighbours" or "normal"
                "pose_prior": "neighbours" if prior is not None else "normal",
                # the neighbours bank: pairs, faces, neighbours k, search dimensions, calibration (null: none)
                "pose_prior_fit": None if prior is None else prior.fit_report,
                # true: the weights draw B, G, R (trained on red and blue swapped); the graph exchanges them
                "swap_red_blue": swap,
            },
            extra_tensors={}
            if prior is None
            else {POSE_PRIOR_PREFIX + k: v.detach().cpu().contiguous() for k, v in prior.state_dict().items()},
        )

    def _calibrated(self, prior, G, cfg: Wav2PixConfig, labels: Sequence[str], source: GraphSource):
        """``prior`` calibrated by :func:`.bank_calibration.calibrate_on_data` on the training data."""
        from training.families.wav2pix.bank_calibration import calibrate_on_data

        if prior is None:
            raise UserError("--calibrate-bank needs the neighbours pose prior (a pose-code generator, --pose-prior "
                            "neighbours)")  # fmt: skip
        if "calibration" in (prior.fit_report or {}):
            raise UserError("--calibrate-bank: the bank is calibrated already; calibrate the run or an uncalibrated "
                            "bundle")  # fmt: skip
        hashes = (source.split or {}).get("val_face_hashes")
        out, _ = calibrate_on_data(G, cfg, prior, labels, list(source.data), None if hashes is None else set(hashes))
        return out

    def add_evaluate_arguments(self, group: argparse._ArgumentGroup) -> None:
        """The face evaluation's flags (:mod:`.evaluate`)."""
        from training.families.wav2pix.evaluate import add_arguments

        add_arguments(group)

    def evaluate(self, model, args: argparse.Namespace) -> dict[str, Any]:
        """Face evaluation on the validation split (:func:`.evaluate.evaluate`)."""
        from training.families.wav2pix.evaluate import evaluate

        return evaluate(model, args)

    def describe(self, cfg: Wav2PixConfig) -> str:
        """Architecture line for ``TRAINING.md``."""
        m = cfg.model
        return (
            f"wav2pix, front end {m.front_end}, {m.image_size} px, g_channels {m.g_channels} (min {m.g_min_channels}), "
            f"encoder_channels {m.encoder_channels}, embedding {m.embedding_dim}, noise {m.noise_dim}, "
            f"pose code {m.pose_code_dim}"
        )


FAMILY = Wav2Pix()
