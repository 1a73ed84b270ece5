"""``run.py evaluate``: evaluate a model bundle or a run folder with its family's metrics, or rating-station files.

``python run.py evaluate BUNDLE_OR_RUN --data DIR [...]`` opens the model (:func:`open_model`: a bundle through
the engine, a run folder in-process with the graph ``export`` would write) and hands it to its family's
:meth:`~training.families.contract.Family.evaluate` (wav2pix: face detection, identity, Fréchet distance, see
:mod:`training.families.wav2pix.evaluate`), which prints a table and writes ``metrics.json`` and a sample sheet
to ``--out``. ``python run.py evaluate --ratings FILE.jsonl`` reports the rating station's mean opinion scores
(:mod:`training.ratings`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from engine.errors import UserError
from training import families, runs
from training.families.contract import GraphSource, Model

log = logging.getLogger(__name__)


def open_model(target: Path, args: argparse.Namespace) -> Model:
    """Open a model bundle (``bundle.json`` present; :class:`engine.generator.Generator` on ``args.backend``) or a
    run folder (:func:`training.runs.load_run` with ``args.checkpoint`` / ``args.generator``; the family's graph
    built with the family's export flags in ``args``, on ``args.device``).

    Raises:
        UserError: neither a bundle nor a run folder, or it cannot be loaded.
    """
    target = Path(target)
    if not target.exists():
        raise UserError(f"{target}: no such bundle or run folder")
    if (target / "bundle.json").is_file():
        from engine.generator import Generator
        from training.config import load_config

        gen = Generator(target, backend=getattr(args, "backend", "auto"))
        cfg = load_config(target / "config.yaml")

        def run_bundle(**inputs: np.ndarray) -> dict[str, np.ndarray]:
            return gen.run(**inputs)

        return Model(
            name=target.name, kind="bundle", family=families.get(gen.bundle.family), cfg=cfg,
            labels=list(gen.labels), sample_rate=gen.sample_rate,
            inputs={k: v.shape for k, v in gen.bundle.inputs.items()},
            outputs={k: v.shape for k, v in gen.bundle.outputs.items()}, run=run_bundle,
            info={"bundle": str(target), "backend": gen.backend_name, "training": gen.bundle.manifest.get("training", {})},
        )  # fmt: skip
    import torch

    from training.export import inference_graph

    family, G, cfg, labels, info = runs.load_run(target, getattr(args, "checkpoint", None),
                                                 getattr(args, "generator", "ema"))  # fmt: skip
    split = runs.read_split(target)
    data = tuple((split or {}).get("data") or getattr(args, "data", None) or ())
    graph = inference_graph(family, cfg, G, labels, GraphSource(run_dir=target, data=data, split=split), args)
    device = getattr(args, "device", "auto")
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    module = graph.module.to(dev).eval()

    def run_module(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        names = list(graph.inputs)
        n = len(next(iter(inputs.values())))
        parts: list[dict[str, np.ndarray]] = []
        with torch.inference_mode():
            for i in range(0, n, 64):
                args_ = [torch.from_numpy(np.ascontiguousarray(inputs[k][i : i + 64], np.float32)).to(dev) for k in names]
                out = module(*args_)
                out = out if isinstance(out, (tuple, list)) else (out,)
                parts.append({k: o.float().cpu().numpy() for k, o in zip(graph.outputs, out)})
        return {k: np.concatenate([p[k] for p in parts]) for k in graph.outputs}

    return Model(
        name=target.name, kind="run", family=family, cfg=cfg, labels=list(labels), sample_rate=graph.sample_rate,
        inputs={k: v.shape for k, v in graph.inputs.items()}, outputs={k: v.shape for k, v in graph.outputs.items()},
        run=run_module, info={**info, "device": str(dev), "family_info": graph.family_info}, split=split,
    )  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``run.py evaluate``: the shared ones, then each family's (in groups)."""
    from training.export import add_family_arguments

    parser.add_argument(
        "target", metavar="BUNDLE_OR_RUN", type=Path, nargs="?",
        help="a model bundle or a training run folder (optional with --ratings)",
    )  # fmt: skip
    parser.add_argument(
        "--data", action="append", metavar="DIR",
        help="dataset folder the model was trained on (repeat for several; required with BUNDLE_OR_RUN)",
    )  # fmt: skip
    parser.add_argument(
        "--ratings", action="append", type=Path, metavar="RATINGS.jsonl",
        help="rating-station file(s) (run.py rate): mean opinion score with a 95 %% CI per model (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--json", type=Path, metavar="OUT",
        help="with --ratings: write the opinion-score report here (default out/eval/ratings.json)",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, metavar="EVAL_DIR",
        help="output folder (default: RUN/eval for a run, out/eval/<bundle name> for a bundle)",
    )  # fmt: skip
    parser.add_argument("--seeds", type=int, default=4, help="generated samples per validation item (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="base noise seed (default 0)")
    parser.add_argument(
        "--max-pairs", type=int, default=0,
        help="evaluate at most this many validation items, evenly spaced (default 0 = all)",
    )  # fmt: skip
    parser.add_argument("--backend", default="auto", help="engine backend for a bundle (default auto)")
    parser.add_argument("--device", default="auto", help="torch device for a run folder: auto, cpu, cuda")
    parser.add_argument("--checkpoint", type=Path, help="for a run folder: this checkpoint instead of the newest")
    parser.add_argument(
        "--generator", choices=runs.GENERATORS, default="ema",
        help="for a run folder: the moving-average weights (default) or the trained weights",
    )  # fmt: skip
    add_family_arguments(parser, "add_evaluate_arguments")
    add_family_arguments(parser, "add_export_arguments")


def ratings_main(paths: list[Path], json_out: Path | None) -> int:
    """``evaluate --ratings``: mean opinion score per model (:mod:`training.ratings`); prints a table, writes JSON."""
    from training import ratings

    data = ratings.report(paths)
    out = json_out or Path("out") / "eval" / "ratings.json"
    ratings.write_json(out, data)
    print(ratings.format_table(data["models"], data["confidence"]))
    invalid = f"; {data['n_invalid_lines']} invalid lines skipped" if data["n_invalid_lines"] else ""
    print(f"{data['n_ratings']} ratings from {len(paths)} file(s){invalid}; wrote {out}")
    return 0


def main(args: argparse.Namespace) -> int:
    """Run ``evaluate``; returns 0. With ``--ratings`` (and no BUNDLE_OR_RUN) only the opinion-score report."""
    ratings_files = getattr(args, "ratings", None)
    if args.target is None:
        if ratings_files:
            return ratings_main(ratings_files, getattr(args, "json", None))
        raise UserError("evaluate: give a BUNDLE_OR_RUN (with --data DIR) or --ratings RATINGS.jsonl")
    if not args.data:
        raise UserError(f"evaluate {args.target}: --data DIR is required (the dataset the model was trained on)")
    if ratings_files:
        ratings_main(ratings_files, getattr(args, "json", None))
    if args.seeds < 1:
        raise UserError(f"--seeds: expected >= 1, got {args.seeds}")
    if args.max_pairs < 0:
        raise UserError(f"--max-pairs: expected >= 0, got {args.max_pairs}")
    model = open_model(args.target, args)
    if args.out is None:
        args.out = Path(args.target) / "eval" if model.kind == "run" else Path("out") / "eval" / Path(args.target).name
    model.family.evaluate(model, args)
    return 0
