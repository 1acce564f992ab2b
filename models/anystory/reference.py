"""A subject's inputs to AnyStory: the masked SigLIP image, its token mask, the reference latent.

Resizes go through PIL on 8-bit pixels (bicubic for SigLIP, Lanczos for the VAE, nearest for
masks) as the official pipeline does. The background is composited to 0.5 grey, which equals
the official multiply-by-mask after normalising to [-1, 1]: SigLIP and the VAE both see the
subject on mid grey.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

SIGLIP_SIZE = 384
REF_SIZE = 512
LATENT_SHIFT = 0.1159  # FLUX's process_in: (z - shift) * scale
LATENT_SCALE = 0.3611
PATCH = 2  # FLUX packs 2x2 latent pixels into one token
VAE_DOWNSCALE = 8


def _resize(pixels: torch.Tensor, size: int, resample) -> torch.Tensor:
    """[H, W, C] in 0..1 -> [size, size, C], through 8-bit PIL like the official pipeline."""
    array = np.clip(pixels.detach().cpu().float().numpy() * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if array.shape[-1] == 1:
        image = Image.fromarray(array[..., 0]).resize((size, size), resample=resample)
        return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[..., None]
    image = Image.fromarray(array).resize((size, size), resample=resample)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)


def masked_square(image: torch.Tensor, mask: torch.Tensor | None, size: int, resample) -> tuple[torch.Tensor, torch.Tensor]:
    """([size, size, 3] subject on 0.5 grey, [size, size] mask) from [H, W, 3] and [H, W] (None = all subject)."""
    pixels = _resize(image[..., :3], size, resample)
    if mask is None:
        return pixels, torch.ones(size, size)
    resized = _resize(mask[..., None], size, Image.Resampling.NEAREST)[..., 0]
    return pixels * resized[..., None] + 0.5 * (1.0 - resized[..., None]), resized


def siglip_input(image: torch.Tensor, mask: torch.Tensor | None, mean, std, size: int = SIGLIP_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """SigLIP pixel values [1, 3, size, size] of the masked subject, and its [1, (size/14)², 1] token mask."""
    pixels, resized = masked_square(image, mask, size, Image.Resampling.BICUBIC)
    mean = torch.as_tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32).view(3, 1, 1)
    values = ((pixels.movedim(-1, 0) - mean) / std)[None]
    return values, token_mask(resized, size // 14)


def token_mask(mask: torch.Tensor, grid: int) -> torch.Tensor:
    """[grid², 1] of a [S, S] mask: a token is in when any of its pixels is (average pool > 0)."""
    return (F.adaptive_avg_pool2d(mask[None, None].float(), grid) > 0).flatten(1).transpose(0, 1)[None].float()


def reference_pixels(image: torch.Tensor, mask: torch.Tensor | None, size: int = REF_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE's input [1, size, size, 3] (0..1, subject on grey) and the [size, size] mask."""
    pixels, resized = masked_square(image, mask, size, Image.Resampling.LANCZOS)
    return pixels[None], resized


def pack_latent(latent: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] VAE latent -> [B, (h/2)(w/2), C*4] tokens after FLUX's shift and scale, (c, ph, pw) order."""
    z = (latent.float() - LATENT_SHIFT) * LATENT_SCALE
    b, c, h, w = z.shape
    z = z.reshape(b, c, h // PATCH, PATCH, w // PATCH, PATCH)
    return z.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // PATCH) * (w // PATCH), c * PATCH * PATCH)


def reference_mask(mask: torch.Tensor, size: int = REF_SIZE) -> torch.Tensor:
    """[1, (size/16)², 1]: a reference token is subject when any of its pixels is."""
    return token_mask(mask, size // (VAE_DOWNSCALE * PATCH))


def reference_ids(grid: int, axes: int = 3) -> torch.Tensor:
    """[grid², axes] position ids (0, row, col - grid): the reference sits left of the image, the same for every subject."""
    rows = torch.arange(grid, dtype=torch.float32).repeat_interleave(grid)
    cols = torch.arange(grid, dtype=torch.float32).repeat(grid) - grid
    ids = torch.zeros(grid * grid, axes)
    ids[:, 1], ids[:, 2] = rows, cols
    return ids
