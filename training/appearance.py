"""The appearance code: within-identity principal components of a face crop's thumbnail.

Why: with the pose code (:class:`training.landmarks.PoseCodes`) the default speech -> face generator draws head
pose and expression from the real faces' spread, but not the rest of what changes from shot to shot of the same
person: framing (a wider shot that shows the shirt), lighting and colour (greyscale inserts), eyes closed or
looking down. Along the leading principal components of 16x16 thumbnails, within each identity, its faces sit up
to 0.8 standard deviations off the real validation faces' mean and spread 0.5x to 1.8x as much (README, "Default
model"). The appearance code names those components, so the generator can be told which shot to make:

- each real training face's thumbnail (the crop average-pooled to ``thumbnail`` x ``thumbnail`` pixels, RGB in
  [-1, 1]) minus its identity's mean thumbnail is projected on the A leading principal directions of those
  residuals (pooled over identities) and divided by the identity's standard deviation along each: mean 0 and
  standard deviation 1 per identity and component, like the pose code;
- with ``model.appearance_code_dim`` = A the generator reads noise inputs K..K+A-1 (after the K pose-code inputs)
  as this code; in training it gets the code of the real face paired with each voice, the discriminator's code
  projection checks it (it is part of the same code vector), and ``loss.appearance_code_weight`` penalises the
  squared difference between the code and :meth:`AppearanceCodes.encode_images` of the generated face, which is
  differentiable and costs one average pool and one matrix product;
- at inference the pose prior (:class:`training.models.wav2pix.PoseCodePrior`), fitted to the whole code
  vector, draws it from the training faces' own distribution inside the exported graph.

This is instance conditioning in the sense of IC-GAN (Casanova et al., "Instance-Conditioned GAN", NeurIPS 2021),
with a fixed linear feature of the image instead of a learned encoder, and the code sampled from the training
faces' codes. The features are the images' own pixels: nothing here reads the dlib face embeddings the
evaluation measures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from training.landmarks import require_two_per_identity, within_identity_pca

STATE_PREFIX = "appearance."


@dataclass
class AppearanceCodes:
    """The appearance code's fit (see the module docstring).

    Attributes:
        mean: float32 [I, 3 * T * T] each identity's mean thumbnail (T = ``thumbnail`` pixels a side, RGB in
            [-1, 1], flattened channel-first).
        basis: float32 [A, 3 * T * T] orthonormal principal directions of the within-identity residuals.
        std: float32 [I, A] each identity's standard deviation along them (>= 1e-6).
    """

    mean: torch.Tensor
    basis: torch.Tensor
    std: torch.Tensor

    @property
    def thumbnail(self) -> int:
        """Thumbnail side T in pixels."""
        return int(round((self.mean.shape[1] / 3) ** 0.5))

    @staticmethod
    def thumbnails(images: torch.Tensor, side: int) -> torch.Tensor:
        """Thumbnails float32 [B, 3 * side * side] of images float [B, 3, H, W] in [-1, 1] (area average; H and W
        multiples of ``side``). Differentiable.

        Raises:
            ValueError: images that are not [B, 3, H, W] with H and W multiples of ``side``.
        """
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] % side or images.shape[3] % side:
            raise ValueError(f"appearance code: expected images [B, 3, H, W] with H, W multiples of {side}, "
                             f"got {tuple(images.shape)}")  # fmt: skip
        return F.adaptive_avg_pool2d(images.float(), side).flatten(1)

    @classmethod
    def fit(
        cls, faces: np.ndarray, labels: np.ndarray, n_identities: int, components: int, thumbnail: int = 16
    ) -> AppearanceCodes:
        """Fit the code to real faces uint8 [N, S, S, 3] (RGB) of identities int [N] in 0..n_identities-1.

        Raises:
            ValueError: mismatched lengths, an identity with fewer than 2 faces, ``components`` outside
                1..min(3 * thumbnail^2, faces - identities), or a side S that ``thumbnail`` does not divide.
        """
        labels = np.asarray(labels)
        if len(labels) != len(faces):
            raise ValueError(f"appearance code: {len(labels)} labels for {len(faces)} faces")
        require_two_per_identity(labels, n_identities, "appearance code", "faces")
        dim = 3 * thumbnail * thumbnail
        if not 1 <= components <= min(dim, len(faces) - n_identities):
            raise ValueError(
                f"model.appearance_code_dim: expected 1..{min(dim, len(faces) - n_identities)}, got {components}"
            )
        thumbs = torch.cat(
            [cls.thumbnails(_to_tensor(faces[i : i + 256]), thumbnail) for i in range(0, len(faces), 256)]
        )
        return cls(*within_identity_pca(thumbs.numpy(), labels, n_identities, components))

    def encode_images(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Differentiable appearance codes float32 [B, A] of images float [B, 3, H, W] in [-1, 1] of identities
        int64 [B], on the images' device."""
        dev = images.device
        mean, basis, std = self.mean.to(dev), self.basis.to(dev), self.std.to(dev)
        return ((self.thumbnails(images, self.thumbnail) - mean[labels]) @ basis.T) / std[labels]

    def encode(self, faces: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Appearance codes float32 [N, A] of faces uint8 [N, S, S, 3] of identities int [N]."""
        lab = torch.from_numpy(np.asarray(labels, np.int64))
        out = [self.encode_images(_to_tensor(faces[i : i + 256]), lab[i : i + 256]) for i in range(0, len(faces), 256)]
        return torch.cat(out).numpy() if out else np.zeros((0, self.basis.shape[0]), np.float32)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat tensors for safetensors, named ``appearance.mean``, ``appearance.basis``, ``appearance.std`` (so
        they sit beside the pose code's in one file)."""
        return {STATE_PREFIX + k: getattr(self, k).detach().cpu().contiguous() for k in ("mean", "basis", "std")}

    @classmethod
    def from_state_dict(cls, tensors: dict[str, torch.Tensor]) -> AppearanceCodes:
        """Inverse of :meth:`state_dict`. Raises KeyError on a file without those tensors."""
        return cls(*(tensors[STATE_PREFIX + k] for k in ("mean", "basis", "std")))


def _to_tensor(faces: np.ndarray) -> torch.Tensor:
    """uint8 [N, S, S, 3] → float32 [N, 3, S, S] in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(faces)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
