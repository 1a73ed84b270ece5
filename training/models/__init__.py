"""Model families, one module each, chosen by name in the config (``model.family``)."""

from __future__ import annotations

from types import ModuleType


def get_family(name: str) -> ModuleType:
    """Return the module implementing model family ``name``.

    Raises:
        KeyError: no such family (the message lists the known ones).
    """
    if name == "wav2pix":
        from training.models import wav2pix

        return wav2pix
    raise KeyError(f"unknown model family '{name}' (known: wav2pix)")
