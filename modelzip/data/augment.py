"""Input jitter: random translations by whole pixels, the augmentation of the distillation teachers."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from modelzip.errors import ConfigError


def jitter(images: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each image shifted by its own random (dy, dx) in [-max_shift, max_shift], zero-filled at the edges.

    Hinton et al. (2015) trained their MNIST teacher "with the input images jittered by up to two
    pixels in any direction". One padded copy and one gather per batch: no loop over images.
    images: (batch, channels, height, width).
    """
    if max_shift < 0:
        raise ConfigError(f"jitter needs max_shift >= 0, got {max_shift}")
    if images.dim() != 4:
        raise ConfigError(f"jitter needs (batch, channels, height, width) images, got {tuple(images.shape)}")
    if max_shift == 0:
        return images
    n, c, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4)  # (n, c, h + 2s, w + 2s)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n, 1, 1), generator=generator, device=images.device)
    rows = torch.arange(h, device=images.device).view(1, h, 1) + dy  # (n, h, 1)
    cols = torch.arange(w, device=images.device).view(1, 1, w) + dx  # (n, 1, w)
    batch = torch.arange(n, device=images.device).view(n, 1, 1)
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # (n, c, h, w)
