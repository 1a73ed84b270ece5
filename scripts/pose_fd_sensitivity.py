"""How much Fréchet distance does a missing pose spread cost on its own? (diagnostic behind the README's
"Default model" section).

Takes the real *training* faces of the default model's split, keeps only those whose head yaw (and mouth
opening) lies in a narrow band around the median, as narrow as the generated faces' spread, and measures the
Fréchet distance of their dlib face embeddings to the real validation faces; random subsets of the same size
are the control (they differ only in sample size). Prints a table; about 2 minutes on 2 CPU cores.

    python scripts/pose_fd_sensitivity.py [--data ../shared/data/wav2pix/train]
        [--split docs/default_model/split.json] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training import face_metrics as fm  # noqa: E402
from training.data import load_dataset  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared/data/wav2pix/train"))
    ap.add_argument("--split", default=str(REPO / "docs/default_model/split.json"))
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--controls", type=int, default=20, help="random subsets per row")
    args = ap.parse_args()
    if not Path(args.data).is_dir():
        print(f"{args.data}: Wav2Pix data not found", file=sys.stderr)
        return 2
    ds = load_dataset([args.data], 16000, 64)
    val_hashes = set(json.loads(Path(args.split).read_text())["val_face_hashes"])
    is_val = np.array([h in val_hashes for h in ds.face_hashes])
    analyzer = fm.FaceAnalyzer()
    real_val, real_train = analyzer.analyze(ds.faces[is_val]), analyzer.analyze(ds.faces[~is_val])
    te, ve = real_train.embeddings, real_val.embeddings
    pose = fm.pose_statistics(real_train.landmarks)
    yaw_off = np.abs(pose["yaw"] - np.nanmedian(pose["yaw"]))
    mouth_off = np.abs(pose["mouth_open"] - np.nanmedian(pose["mouth_open"]))
    rng = np.random.default_rng(0)
    rows = []
    bands = [("all training faces", np.ones(len(te), bool))]
    bands += [(f"|yaw - median| < {t}", yaw_off < t) for t in (0.06, 0.1, 0.15)]
    bands += [
        (f"|yaw - median| < 0.06 and |mouth - median| < {t}", (yaw_off < 0.06) & (mouth_off < t)) for t in (0.03, 0.05)
    ]
    for name, sel in bands:
        n = int(sel.sum())
        mean_t, cov_t = fm.frechet_terms(te[sel], ve)
        ctrl = [fm.frechet_distance(te[rng.choice(len(te), n, replace=False)], ve) for _ in range(args.controls)]
        rows.append(
            {
                "faces": name,
                "n": n,
                "yaw_std": float(np.nanstd(pose["yaw"][sel])),
                "mouth_std": float(np.nanstd(pose["mouth_open"][sel])),
                "fd": mean_t + cov_t,
                "fd_mean_term": mean_t,
                "fd_cov_term": cov_t,
                "fd_random_subsets_same_n": float(np.median(ctrl)),
            }
        )
    print(f"{len(ve)} validation faces; Fréchet distance of dlib embeddings to them")
    print(f"{'training faces':52s} {'n':>4s} {'yaw std':>8s} {'mouth std':>9s} {'FD':>7s} {'random n':>9s}")
    for r in rows:
        print(
            f"{r['faces']:52s} {r['n']:4d} {r['yaw_std']:8.3f} {r['mouth_std']:9.3f} {r['fd']:7.4f}"
            f" {r['fd_random_subsets_same_n']:9.4f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
