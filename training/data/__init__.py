"""Datasets and importers: Wav2Pix layout, AVGAN capture layout, preprocessing, DiffAugment.

Main entry: :func:`training.data.dataset.load_dataset` and :func:`training.data.dataset.split_by_face`.
"""

from training.data.dataset import PairDataset, load_dataset, split_by_face

__all__ = ["PairDataset", "load_dataset", "split_by_face"]
