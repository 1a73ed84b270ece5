"""Model families: one package each under ``training/families/<name>/``, chosen by name in the config or bundle.

A family package exposes ``FAMILY``, an instance of :class:`training.families.contract.Family`. The packages in
this folder are found by name at first use, so adding a family means adding its folder and nothing else;
:func:`register` adds one defined elsewhere (a test's toy family, a plug-in).
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from training.families.contract import Family

_REGISTRY: dict[str, Family] = {}


def _discover() -> list[str]:
    """Names of the family packages in this folder."""
    return sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if m.ispkg)


def register(family: Family) -> Family:
    """Make ``family`` known under ``family.name`` (replacing an earlier registration); returns it."""
    _REGISTRY[family.name] = family
    return family


def names() -> list[str]:
    """Every known family name (built-in and registered), sorted."""
    return sorted(set(_discover()) | set(_REGISTRY))


def get(name: str) -> Family:
    """The family called ``name``.

    Raises:
        KeyError: no such family (the message lists the known ones).
    """
    if name not in _REGISTRY and name in _discover():
        module = importlib.import_module(f"training.families.{name}")
        register(module.FAMILY)
    if name not in _REGISTRY:
        raise KeyError(f"unknown model family {name!r} (known: {', '.join(names())})")
    return _REGISTRY[name]


__all__ = ["Family", "get", "names", "register"]
