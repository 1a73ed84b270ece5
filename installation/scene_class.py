"""The ``scene_class`` parameter: an operator pins the scene's class, or a mixture of classes, instead of the sound.

A bundle with a ``class`` input (float32 [B, C], the weights of its ``labels``; all zero = follow the sound) can
be steered over OSC: ``/avgan/scene_class cello`` pins a class, ``/avgan/scene_class "cello:0.7 violin:0.3"``
blends two, ``/avgan/scene_class sound`` (or an empty string) lets the sound choose again. The live loop asks
the bundle whether it has a ``class`` input, never which family made it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

FOLLOW = ("", "sound")
"""Values of ``scene_class`` that mean "follow the sound"."""


def parse_class_weights(text: str, labels: Sequence[str]) -> np.ndarray | None:
    """Class weights float32 [C] (summing to 1) of a ``scene_class`` value, or None to follow the sound.

    ``text``: tokens separated by spaces or commas, each ``NAME`` or ``NAME:WEIGHT`` (weight >= 0, default 1);
    NAME is one of ``labels`` (case-insensitive) or, when no label is spelled so, its index. A class named twice
    adds up. ``""`` and ``"sound"`` follow the sound.

    Raises:
        ValueError: an unknown class, a bad or negative weight, or all weights zero (the message lists the labels).
    """
    text = text.strip()
    if text.lower() in FOLLOW:
        return None
    by_name = {label.lower(): k for k, label in enumerate(labels)}
    weights = np.zeros(len(labels), np.float64)
    for token in (t for t in re.split(r"[\s,]+", text) if t):
        name, _, weight_text = token.partition(":")
        try:
            weight = float(weight_text) if weight_text else 1.0
        except ValueError:
            raise ValueError(f"scene_class {text!r}: weight {weight_text!r} of {name!r} is not a number") from None
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"scene_class {text!r}: weight of {name!r} must be a number >= 0, got {weight_text}")
        k = by_name.get(name.lower())
        if k is None and name.isdigit() and int(name) < len(labels):
            k = int(name)
        if k is None:
            raise ValueError(f"scene_class {text!r}: unknown class {name!r} (this model knows: {', '.join(labels)}; "
                             f"or 'sound' to follow the sound)")  # fmt: skip
        weights[k] += weight
    total = weights.sum()
    if not total > 0:
        raise ValueError(f"scene_class {text!r}: every weight is 0 (use 'sound' to follow the sound)")
    return (weights / total).astype(np.float32)
