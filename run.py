#!/usr/bin/env python3
"""AVGAN command line: a thin dispatcher.

Each command lives in one module exposing ``add_arguments(parser)`` and
``main(args) -> int``; this file only parses the command line and hands off.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
from typing import Any

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("training.loop", "train a model family (named in the config) on one or more dataset folders"),
    "evaluate": (
        "training.evaluate",
        "evaluate a bundle or run folder with its family's metrics, or rating-station files",
    ),
    "generate": ("training.generate", "one image (and sound) per audio file, or N samples, with a bundle"),
    "export": ("training.export", "export a run folder to a model bundle (ONNX + torch.export)"),
    "render": ("installation.render", "render an audio or video file to a generated video"),
    "live": ("installation.live", "the live installation: microphone in, generated faces fullscreen"),
    "capture": ("installation.capture", "open-day capture booth: camera + microphone -> consented face+voice dataset"),
    "dataset": ("datastore.capture_store", "check a capture dataset, or delete one participant's takes"),
    "rate": ("installation.rate", "rating station: visitors score generated faces 1-5 (mean opinion score)"),
    "devices": (
        "installation.devices",
        "list audio devices, cameras and displays (as --input and the presets name them)",
    ),
    "bench": ("benchmarks.cli", "run the benchmarks; print a table and write JSON"),
}


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill PID``, ``systemctl stop``), raised in the main thread by :func:`main`'s handler.

    A :class:`KeyboardInterrupt`, so every command cleans up on SIGTERM exactly as on Ctrl-C: ``render``
    deletes its partial output, ``live`` and ``capture`` close their devices and finalise their reports.
    ``run.py`` then exits 143 (128 + SIGTERM), as a process killed by the signal would. ``live`` is the
    exception: its :class:`installation.service.Service` takes SIGTERM once the loop runs (``systemctl stop``),
    ends the loop after its frame and exits 0.
    """


def _terminate(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: a second SIGTERM must not interrupt the clean-up
    raise Terminated()


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser. Only the chosen command's module is imported (all of them for ``--help``)."""
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if a in COMMANDS), None)
    wants_help = "-h" in argv or "--help" in argv
    parser = argparse.ArgumentParser(prog="run.py", description="AVGAN: audio-conditioned generative installations")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if name == chosen or (wants_help and chosen is None):
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the command. Returns the process exit code."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from engine.configs import ConfigError
    from engine.errors import UserError

    module = importlib.import_module(args._module)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        return int(module.main(args) or 0)
    except (UserError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        print("terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main())
