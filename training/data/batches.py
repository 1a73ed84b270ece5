"""Batch sampling shared by every family's trainer."""

from __future__ import annotations

import numpy as np


class Batches:
    """Per-process epoch permutations of the training indices (disjoint shards across torchrun ranks).

    Args:
        indices: int [N] items to draw from. batch: items per batch. seed: permutation seed (epoch e uses
        ``default_rng([seed, e])``, the same on every rank). rank, world: this process and the process count.
    """

    def __init__(self, indices: np.ndarray, batch: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.indices, self.batch, self.seed, self.rank, self.world = indices, batch, seed, rank, world
        self.epoch, self.pos, self.order = -1, 0, np.zeros(0, np.int64)

    def next(self) -> np.ndarray:
        """The next int64 [batch] indices (a new permutation when the epoch's are used up)."""
        if self.pos + self.batch > len(self.order):
            self.epoch += 1
            perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.indices)
            self.order = perm[self.rank :: self.world]
            self.pos = 0
        out = self.order[self.pos : self.pos + self.batch]
        self.pos += self.batch
        return out
