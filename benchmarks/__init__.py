"""AVGAN benchmarks: ``python run.py bench`` (see :mod:`benchmarks.cli`).

Each benchmark is a module exposing ``run(args) -> list[dict]`` (one dict per
table row) and optionally ``add_arguments(parser)``; :mod:`benchmarks.cli`
holds the registry, prints the tables and writes ``benchmarks/results.json``.
"""
