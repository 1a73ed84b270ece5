"""Which cues of a voice Resemblyzer needs to name its speaker, and which of them an avgan faces bundle's voices have.

Real validation clips of the Wav2Pix pairs go through the bundle's own spectrogram codec (analysis -> edit ->
synthesis, no generator) with one cue removed at a time, and Resemblyzer's nearest-centroid speaker accuracy is
measured as ``run.py evaluate`` does (nearest speaker centroid), with centroids of 300 real training clips. Then the
bundle's generated voices for the same clips are compared with the real clips on the cues it could have learned: the
long-term spectrum's difference between the two speakers, the spread of the log-magnitude over time, and its frame-
to-frame change.

    python scripts/avgan_voice_cues.py [--bundle presets/models/avgan-faces-64] [--data ../shared/data/wav2pix/train]

Prints a table and writes JSON (default ``out/avgan-voice-cues.json``). Needs resemblyzer (scripts/setup.sh).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training.data import load_dataset, split_by_face  # noqa: E402
from training.families.avgan import voices  # noqa: E402
from training.families.avgan.data import normalise_peak  # noqa: E402
from training.families.avgan.spectral import SpectrogramCodec  # noqa: E402
from training.generate import open_bundle  # noqa: E402


def blur(logmag: torch.Tensor, bins: int, frames: int) -> torch.Tensor:
    """Box-blur of log-magnitudes [B, K, T] over ``bins`` frequency rows and ``frames`` columns (edges replicated)."""
    x = F.pad(logmag[:, None], (frames // 2, frames // 2, bins // 2, bins // 2), mode="replicate")
    return F.conv2d(x, torch.ones(1, 1, bins, frames) / (bins * frames))[:, 0]


def mel_round_trip(codec: SpectrogramCodec, clips: np.ndarray, n_mels: int, rate: int) -> torch.Tensor:
    """Standardised log-magnitudes [B, K, T] of clips [B, N] kept as ``n_mels`` mel bands (each band's mean
    magnitude, :func:`training.layers.mel_filterbank`) and spread back over the linear bins in the log domain
    (each bin the filterbank-weighted mean of the bands covering it; bins no band covers take the first band):
    the magnitude a mel-scaled spectrogram image (GANSynth's IF-Mel) can hold."""
    from training.layers import mel_filterbank

    bank = torch.from_numpy(mel_filterbank(codec.n_fft, n_mels, rate)[:, : codec.bins])
    real, imag = codec.stft(torch.from_numpy(clips))
    mel = torch.log(torch.matmul(bank / bank.sum(1, keepdim=True), torch.sqrt(real**2 + imag**2)) + 1e-5)
    cover = bank.sum(0, keepdim=True)
    spread = torch.matmul((bank / cover.clamp_min(1e-12)).T, mel)
    spread[:, cover[0] == 0] = mel[:, :1]
    return (spread - codec.mean[:, None]) / codec.std[:, None]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=Path("presets/models/avgan-faces-64"))
    ap.add_argument("--data", type=Path, default=Path("../shared/data/wav2pix/train"))
    ap.add_argument("--clips", type=int, default=150, help="validation clips, evenly spaced (default 150)")
    ap.add_argument("--json", type=Path, default=Path("out/avgan-voice-cues.json"))
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"{args.data}: absent (the Wav2Pix pairs, ../shared/data/wav2pix/train)", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    gen = open_bundle(args.bundle, "onnxruntime-cpu")
    rate, n = gen.sample_rate, gen.window_samples
    spec_cfg = gen.bundle.family_info["spectrogram"]
    codec = SpectrogramCodec(spec_cfg["n_fft"], spec_cfg["hop"], spec_cfg["frames"], n)
    from safetensors.torch import load_file

    state = load_file(str(Path(gen.bundle.path) / "generator.safetensors"))  # the folder open_bundle found
    codec.mean.copy_(state["codec.mean"])
    codec.std.copy_(state["codec.std"])

    pairs = load_dataset([args.data], rate, 64)
    if len(pairs.identities) != 2:
        print(f"{args.data}: expected the two Wav2Pix speakers, found {len(pairs.identities)}", file=sys.stderr)
        return 2
    train, val = split_by_face(pairs, 0.1, 0)
    tr = train[np.linspace(0, len(train) - 1, 300).astype(int)]
    va = val[np.linspace(0, len(val) - 1, args.clips).astype(int)]
    labels = pairs.labels[va]
    k = len(pairs.identities)
    cent = voices.centroids(voices.embed(pairs.windows(tr, n), rate).embeddings, pairs.labels[tr], k)
    clips = normalise_peak(pairs.windows(va, n))
    spec = codec.encode(torch.from_numpy(clips))
    logmag = spec[:, 0]
    random_if = torch.rand(logmag.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    envelope = logmag.mean(1, keepdim=True)
    envelope = envelope - envelope.mean(2, keepdim=True)  # loudness over time, zero mean
    train_lm = codec.encode(torch.from_numpy(normalise_peak(pairs.windows(tr, n))))[:, 0]
    speaker_ltas = torch.stack([train_lm[torch.from_numpy(pairs.labels[tr] == i)].mean((0, 2)) for i in range(k)])
    variants = {
        "real clip (analysis -> synthesis)": spec[:, 0],
        "phase removed (random IF)": logmag,
        "harmonics removed (7-bin blur, 219 Hz)": blur(logmag, 7, 1),
        "fast dynamics removed (9-frame blur, 144 ms)": blur(logmag, 1, 9),
        "clip's long-term spectrum + loudness envelope": (logmag.mean(2, keepdim=True) + envelope),
        "speaker's long-term spectrum + loudness envelope": speaker_ltas[labels][:, :, None] + envelope,
        "64 mel bands, spread back over the bins": mel_round_trip(codec, clips, 64, rate),
    }
    rows = []
    for name, lm in variants.items():
        phase = spec[:, 1] if name.startswith("real") else random_if
        with torch.no_grad():
            audio = codec.decode(torch.stack([lm.expand_as(logmag), phase], 1)).clamp(-1, 1).numpy()
        pred = voices.nearest_centroid(voices.embed(audio, rate).embeddings, cent)
        rows.append({"variant": name, "speaker_accuracy": float((pred == labels).mean()),
                     "share": {pairs.identities[i]: float((pred == i).mean()) for i in range(k)}})  # fmt: skip
        print(f"{name:50s} speaker accuracy {rows[-1]['speaker_accuracy']:.3f}", flush=True)

    noise = np.random.default_rng(0).standard_normal((len(va), gen.noise_dim)).astype(np.float32)
    generated = gen.run(audio=pairs.windows(va, n).astype(np.float32), noise=noise)["sound"]
    cues = {}
    for name, audio in (("real", clips), ("generated", generated)):
        lm = codec.log_magnitude(torch.from_numpy(normalise_peak(audio)).float())
        ltas = lm.mean(2)
        gap = ltas[torch.from_numpy(labels == 0)].mean(0) - ltas[torch.from_numpy(labels == 1)].mean(0)
        cues[name] = {
            "speaker_ltas_gap_rms": float(gap.pow(2).mean().sqrt()),
            "temporal_std": float(lm.std(2).mean()),
            "frame_delta": float((lm[:, :, 1:] - lm[:, :, :-1]).abs().mean()),
        }
        print(f"{name:10s} speakers' long-term spectra differ by {cues[name]['speaker_ltas_gap_rms']:.3f} std (RMS "
              f"over bins); spread over time {cues[name]['temporal_std']:.3f}; frame-to-frame change "
              f"{cues[name]['frame_delta']:.3f}")  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"bundle": str(args.bundle), "n_val_clips": int(len(va)), "variants": rows,
                                     "cues": cues}, indent=2))  # fmt: skip
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
