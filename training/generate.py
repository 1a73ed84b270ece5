"""``run.py generate``: one generated sample per audio file (or ``--count N`` of them), with a model bundle.

Every output the bundle names is written: ``image`` as ``NAME.png``, ``sound`` as ``NAME.wav`` (16-bit PCM at
the bundle's sample rate). A bundle without an audio input (an unconditional model) takes ``--count N`` and
writes ``sample-0000`` ... instead.

Each file is decoded with :func:`engine.audio.load_audio` (any common format, any rate, mono mix),
its loudest ``window_samples`` window is picked (:func:`loudest_window`; shorter files are
zero-padded at the end, as in training), and the bundle's generator turns it into an image. The
noise of each file is derived from ``--seed`` and the file's path relative to ``--audio``
(:func:`file_noise`), so a file's image does not depend on which other files are processed or in
what order. Sub-folders of ``--audio`` are mirrored under ``--out``; each PNG is named after the
audio file's stem. Corrupt files are reported by name and skipped; the exit code is 1 if any failed.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.audio import AudioDecodeError, find_audio_files, load_audio, loudest_window
from engine.errors import UserError
from engine.noise import file_noise

log = logging.getLogger(__name__)

DEFAULT_BUNDLE = "presets/models/wav2pix-64"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``run.py generate``."""
    parser.add_argument("--audio", type=Path, help="an audio file or a folder (searched recursively)")
    parser.add_argument(
        "--count", type=int, metavar="N", help="for a bundle without an audio input (unconditional): N samples"
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (sub-folders of --audio are mirrored)")
    parser.add_argument(
        "--bundle", type=Path, default=Path(DEFAULT_BUNDLE), help=f"model bundle (default {DEFAULT_BUNDLE})"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="noise seed (default 0); each file's noise also depends on its path"
    )
    parser.add_argument(
        "--backend",
        default="auto",
        help="engine backend: auto, tensorrt, onnxruntime-cuda, torch-cuda, onnxruntime-cpu, torch-cpu",
    )
    parser.add_argument("--batch", type=int, default=16, help="files per generator call (default 16)")


# ---------------------------------------------------------------------- pieces
def output_paths(relatives: Sequence[Path], out: Path) -> list[Path]:
    """Output path (without suffix) under ``out`` for each relative audio path: same sub-folder, audio stem
    (``.png`` / ``.wav`` are added per output).

    When two audio files in one folder share a stem (``a.wav``, ``a.flac``), both are named
    ``<stem>.<ext>`` instead (``a.wav.png``), so no output overwrites another.
    """
    plain = [out / rel.parent / rel.stem for rel in relatives]
    counts: dict[Path, int] = {}
    for p in plain:
        counts[p] = counts.get(p, 0) + 1
    return [p if counts[p] == 1 else out / rel.parent / rel.name for p, rel in zip(plain, relatives)]


@dataclass
class GenerateReport:
    """What :func:`generate_files` / :func:`generate_count` did: written files and ``(file, message)`` failures."""

    written: list[Path]
    failed: list[tuple[Path, str]]


def write_outputs(outputs: dict[str, np.ndarray], targets: Sequence[Path], sample_rate: int) -> list[Path]:
    """Write sample i of each output beside ``targets[i]`` (a path without suffix): ``image`` uint8 [B, H, W, 3] as
    ``.png``, ``sound`` float32 [B, N] in [-1, 1] as 16-bit ``.wav`` at ``sample_rate`` Hz. Returns the files."""
    import soundfile as sf
    from PIL import Image

    written: list[Path] = []
    for i, target in enumerate(targets):
        target.parent.mkdir(parents=True, exist_ok=True)
        if "image" in outputs:
            Image.fromarray(outputs["image"][i]).save(target.with_name(target.name + ".png"))
            written.append(target.with_name(target.name + ".png"))
        if "sound" in outputs:
            path = target.with_name(target.name + ".wav")
            sf.write(str(path), np.clip(outputs["sound"][i], -1.0, 1.0), sample_rate, subtype="PCM_16")
            written.append(path)
    return written


def generate_files(
    generate: Callable[..., dict[str, np.ndarray]],
    files: Sequence[tuple[Path, Path]],
    out: Path,
    *,
    sample_rate: int,
    window_samples: int,
    noise_dim: int,
    seed: int = 0,
    batch: int = 16,
) -> GenerateReport:
    """Generate one sample per audio file: ``NAME.png`` for an image output, ``NAME.wav`` for a sound output.

    Args:
        generate: ``(audio=float32 [B, window_samples], noise=float32 [B, noise_dim]) -> {"image": uint8
            [B, H, W, 3], "sound": float32 [B, N]}`` (e.g. :meth:`engine.generator.Generator.generate`).
        files: (file, relative path) pairs from :func:`find_audio_files`.
        out: output folder; created as needed.
        sample_rate: Hz the generator expects and its sound output is at; window_samples: samples per window;
            noise_dim: Z.
        seed: base seed of :func:`file_noise`.
        batch: files per ``generate`` call; the last call is zero-padded to this size. Backends may pick
            different kernels for different batch sizes (e.g. ONNX Runtime at batch 1 vs larger: ±1 grey level
            in a few pixels), so padding keeps each output independent of how many files there are and of
            their order; outputs are bit-identical for the same seed, relative path and ``batch``.

    Returns:
        :class:`GenerateReport`. Undecodable files are logged with their name and listed in ``failed``.
    """
    targets = output_paths([rel for _, rel in files], out)
    written: list[Path] = []
    failed: list[tuple[Path, str]] = []
    pending: list[tuple[np.ndarray, np.ndarray, Path]] = []

    def flush() -> None:
        if not pending:
            return
        audio = np.stack([p[0] for p in pending])
        noise = np.stack([p[1] for p in pending])
        size = max(1, batch)
        if len(pending) < size:  # pad: every call has the same batch size, so no result depends on the file set
            audio = np.concatenate([audio, np.zeros((size - len(pending), audio.shape[1]), np.float32)])
            noise = np.concatenate([noise, np.zeros((size - len(pending), noise.shape[1]), np.float32)])
        outputs = generate(audio=audio, noise=noise)
        written.extend(write_outputs(outputs, [t for _, _, t in pending], sample_rate))
        pending.clear()

    for (path, rel), target in zip(files, targets):
        try:
            samples = load_audio(path, sample_rate)
        except (AudioDecodeError, OSError) as exc:
            log.warning("skipping %s: %s", path, exc)
            failed.append((path, str(exc)))
            continue
        pending.append((loudest_window(samples, window_samples), file_noise(seed, rel, noise_dim), target))
        if len(pending) >= max(1, batch):
            flush()
    flush()
    return GenerateReport(written=written, failed=failed)


def generate_count(
    generate: Callable[..., dict[str, np.ndarray]], count: int, out: Path, *, sample_rate: int, noise_dim: int,
    seed: int = 0, batch: int = 16,
) -> GenerateReport:
    """``count`` samples of a bundle without an audio input (an unconditional model): ``sample-NNNN.png`` /
    ``.wav``; sample i's noise is :func:`file_noise` of ``seed`` and its name, so it does not depend on ``count``.

    Raises:
        UserError: ``count`` < 1.
    """
    if count < 1:
        raise UserError(f"--count: expected >= 1, got {count}")
    names = [Path(f"sample-{i:04d}") for i in range(count)]
    written: list[Path] = []
    for i in range(0, count, max(1, batch)):
        chunk = names[i : i + max(1, batch)]
        noise = np.stack([file_noise(seed, n, noise_dim) for n in chunk])
        written.extend(write_outputs(generate(noise=noise), [out / n for n in chunk], sample_rate))
    return GenerateReport(written=written, failed=[])


def open_bundle(bundle: Path, backend: str = "auto"):
    """An :class:`engine.generator.Generator` for ``bundle`` (a relative path missing from the current
    folder is also tried relative to the repository root).

    Raises:
        UserError: the bundle folder or its ``bundle.json`` is missing.
    """
    bundle = Path(bundle)
    repo_relative = Path(__file__).resolve().parent.parent / bundle
    if not bundle.exists() and not bundle.is_absolute() and repo_relative.exists():
        bundle = repo_relative  # e.g. the default presets/models/... when run from another folder
    if not (bundle / "bundle.json").is_file():
        raise UserError(f"{bundle}: not a model bundle (no bundle.json); export one with `run.py export RUN_DIR`")
    from engine.generator import Generator

    return Generator(bundle, backend=backend)


def main(args: argparse.Namespace) -> int:
    """Run ``generate``. Returns 0, or 1 when any file failed to decode."""
    gen = open_bundle(args.bundle, args.backend)
    has_audio = "audio" in gen.bundle.inputs
    log.info("bundle %s on %s (%s)", args.bundle, gen.backend_name, gen.backend_reason)
    if has_audio and args.audio is None:
        raise UserError(f"{args.bundle} is conditioned on audio: give --audio FILE_OR_DIR")
    if not has_audio and args.count is None:
        raise UserError(f"{args.bundle} takes no audio (an unconditional model): give --count N")
    if has_audio:
        if args.count is not None:
            raise UserError("--count applies to bundles without an audio input; this one takes --audio")
        report = generate_files(
            gen.generate, find_audio_files(args.audio), Path(args.out), sample_rate=gen.sample_rate,
            window_samples=gen.window_samples, noise_dim=gen.noise_dim, seed=args.seed, batch=args.batch,
        )  # fmt: skip
    else:
        if args.audio is not None:
            raise UserError(f"{args.bundle} takes no audio input; drop --audio (use --count N)")
        report = generate_count(gen.generate, args.count, Path(args.out), sample_rate=gen.sample_rate,
                                noise_dim=gen.noise_dim, seed=args.seed, batch=args.batch)  # fmt: skip
    print(f"generated {len(report.written)} file(s) in {args.out}; {len(report.failed)} input(s) failed")
    for path, message in report.failed:
        print(f"  failed: {path}: {message}")
    return 1 if report.failed else 0
