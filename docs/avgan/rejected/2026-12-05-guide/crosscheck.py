"""Cross-check (2026-12-05, docs/AVGAN.md): the share of 300 generated sounds (seed 0) named as their code by the
evaluation's spoken-digit classifier, by one trained only on the held-out recordings (FSDD takes 0-4; scored on the
training ones), and by the sound guide (loss.guide_weight).

Run from the repository root::

    python docs/avgan/rejected/2026-12-05-guide/crosscheck.py BUNDLE_OR_RUN[:CHECKPOINT] ...

The "robust_guide" column of crosscheck.json was measured with this script at commit 7703aa3 (the guide trained with
PGD attacks, epsilon 0.2).
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, ".")
from datastore.cache import default_cache_dir  # noqa: E402
from training.evaluate import open_model  # noqa: E402
from training.face_eval import seed_noise  # noqa: E402
from training.families.avgan.data import load_digits, place  # noqa: E402
from training.families.avgan.digits import SpokenDigitClassifier, _fit, classifiers_for, predict, sound_batches  # noqa: E402
from training.families.avgan.evaluate import run_batched  # noqa: E402
from training.families.avgan.guide import guide_for  # noqa: E402

DATA = ["../shared/data/fsdd", "../shared/data/mnist"]


def held_out_classifier(data) -> SpokenDigitClassifier:
    """The evaluation's architecture trained on the held-out recordings only (150 epochs, seed 0; cached)."""
    held = np.flatnonzero(data.takes < 5)
    cache = default_cache_dir() / "crosscheck-heldout-spoken.safetensors"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = SpokenDigitClassifier(8000)
    if cache.is_file():
        model.load_state_dict(load_file(str(cache)))
        return model.eval()

    _fit(model, held, data.labels[held], sound_batches(data, held), epochs=150, seed=0)
    cache.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(cache))
    return model.eval()


def main() -> None:
    data = load_digits(DATA, 8000, 8000, 32, 0.1)
    _, spoken, _ = classifiers_for(data, default_cache_dir())
    held_out = held_out_classifier(data)
    train = np.flatnonzero(data.takes >= 5)
    real = torch.from_numpy(np.stack([place(data.clips[i], 8000) for i in train]))
    accuracy = float((predict(held_out, real).argmax(1) == data.labels[train]).mean())
    print(f"held-out-trained classifier, accuracy on the training recordings: {accuracy:.3f}")
    guide, _ = guide_for(data, 5, default_cache_dir())
    for spec in sys.argv[1:]:
        target, _, checkpoint = spec.partition(":")
        args = argparse.Namespace(checkpoint=checkpoint or None, generator="ema", data=DATA, backend="auto",
                                  device="cpu", truncation=1.0)  # fmt: skip
        model = open_model(Path(target), args)
        noise = seed_noise(0, 0, 300, int(model.inputs["noise"][1]))
        sound = torch.from_numpy(np.ascontiguousarray(run_batched(model, 300, noise=noise)["sound"], np.float32))
        code = noise[:, :10].argmax(1)
        with torch.no_grad():
            by_guide = torch.cat([guide(sound[i : i + 256]) for i in range(0, len(sound), 256)]).argmax(1).numpy()
        shares = {"evaluation": predict(spoken, sound).argmax(1), "held_out_trained": predict(held_out, sound).argmax(1),
                  "guide": by_guide}  # fmt: skip
        print(spec, {k: round(float((v == code).mean()), 3) for k, v in shares.items()}, flush=True)


if __name__ == "__main__":
    main()
