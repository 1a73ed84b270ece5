"""The avgan sound representation's round trip on real speech: analysis -> (log-magnitude, IF) -> synthesis.

    python scripts/avgan_round_trip.py --out docs/avgan            # reads ../shared/data in place

For every 500th Wav2Pix snippet (16 kHz, n_fft 512, hop 256, 64 frames) and every 100th FSDD recording (8 kHz,
n_fft 256, hop 128, 64 frames; centred in 1 s) it encodes the clip with
:class:`training.families.avgan.spectral.SpectrogramCodec`, decodes it with the same code the exported graphs run,
and reports the log-spectral distance (dB) and the SNR (dB) of the result against the original (median, min, max).
Writes ``round_trip.json`` and ``round_trip.png`` (one clip of each: log-magnitude, IF, original and decoded
waveform and their difference).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.audio import load_audio
from training.families.avgan.data import place
from training.families.avgan.spectral import SpectrogramCodec, log_spectral_distance, snr_db

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def measure(files: list[Path], rate: int, n_fft: int, hop: int) -> tuple[dict, np.ndarray, np.ndarray, torch.Tensor]:
    clips = np.stack([place(load_audio(f, rate), rate) for f in files])
    codec = SpectrogramCodec(n_fft, hop, 64, rate)
    codec.fit_statistics(torch.from_numpy(clips))
    image = codec.encode(torch.from_numpy(clips))
    back = codec.decode(image).numpy()
    lsd = [log_spectral_distance(a, b, n_fft, hop // 2) for a, b in zip(clips, back)]
    snr = [snr_db(a, b) for a, b in zip(clips, back)]
    stats = {"clips": len(files), "rate_hz": rate, "n_fft": n_fft, "hop": hop, "frames": 64,
             "lsd_db": {"median": float(np.median(lsd)), "min": float(np.min(lsd)), "max": float(np.max(lsd))},
             "snr_db": {"median": float(np.median(snr)), "min": float(np.min(snr)), "max": float(np.max(snr))}}  # fmt: skip
    return stats, clips, back, image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/avgan"))
    args = parser.parse_args()
    speech = sorted((DATA / "wav2pix" / "train").glob("*/preprocessed_frame_*"))[::500]
    digits = sorted((DATA / "fsdd" / "recordings").glob("*.wav"))[::100]
    s16, c16, b16, i16 = measure(speech, 16000, 512, 256)
    s8, c8, b8, i8 = measure(digits, 8000, 256, 128)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"wav2pix_speech": s16, "fsdd_digits": s8}
    (args.out / "round_trip.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 6))
    for row, (name, clips, back, image, rate) in enumerate(
        (("Wav2Pix speech, 16 kHz", c16, b16, i16, 16000), ("FSDD digit, 8 kHz", c8, b8, i8, 8000))
    ):
        axes[row, 0].imshow(image[0, 0].numpy(), origin="lower", aspect="auto", cmap="magma")
        axes[row, 0].set_title(f"{name}: standardised log-magnitude")
        axes[row, 1].imshow(image[0, 1].numpy(), origin="lower", aspect="auto", cmap="twilight", vmin=-1, vmax=1)
        axes[row, 1].set_title("instantaneous frequency / pi (demodulated)")
        t = np.arange(clips.shape[1]) / rate
        axes[row, 2].plot(t, clips[0], lw=0.5, label="original")
        axes[row, 2].plot(t, back[0], lw=0.5, label="decoded", alpha=0.7)
        axes[row, 2].plot(t, clips[0] - back[0], lw=0.5, label="difference")
        axes[row, 2].set_title(f"LSD {log_spectral_distance(clips[0], back[0]):.2f} dB, SNR {snr_db(clips[0], back[0]):.1f} dB")
        axes[row, 2].legend(loc="upper right", fontsize=7)
        axes[row, 0].set_ylabel("frequency bin")
        for a in axes[row, :2]:
            a.set_xlabel("frame")
        axes[row, 2].set_xlabel("s")
    fig.tight_layout()
    fig.savefig(args.out / "round_trip.png", dpi=90)
    print(f"wrote {args.out / 'round_trip.png'} and {args.out / 'round_trip.json'}")


if __name__ == "__main__":
    main()
