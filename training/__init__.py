"""AVGAN training: datasets and importers, model families, losses, trainer, evaluation, export."""
