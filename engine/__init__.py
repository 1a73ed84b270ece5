"""AVGAN inference engine: model bundles and backends (TensorRT, ONNX Runtime, torch).

Imports nothing else of AVGAN's. See :mod:`engine.bundle` and :mod:`engine.generator`.
"""
