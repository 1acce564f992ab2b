"""CLIP pixels exactly as the official pipeline makes them, and the mask query's patch grid.

The official code uses a default ``CLIPImageProcessor()``: PIL bicubic resize of the 8-bit
image so the short side is 224 (long side floored), centre crop 224, /255, CLIP mean/std.
ComfyUI's ``clip_preprocess`` (torch bicubic with antialias, rounded long side) differs by
up to ~0.06, so the pixels are made here with PIL for exact parity.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

CLIP_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class CropWindow(NamedTuple):
    """Where the centre crop falls in the original image: rows [top, bottom), columns [left, right)."""

    top: int
    bottom: int
    left: int
    right: int


def resized_size(height: int, width: int, size: int = CLIP_SIZE) -> tuple[int, int]:
    """(height, width) after the shortest-side resize: the short side is ``size``, the long side floored."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def crop_window(height: int, width: int, size: int = CLIP_SIZE) -> CropWindow:
    """The centre crop of the resized image, mapped back to the original pixels (rounded)."""
    new_h, new_w = resized_size(height, width, size)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    sy, sx = height / new_h, width / new_w
    return CropWindow(round(top * sy), round((top + size) * sy), round(left * sx), round((left + size) * sx))


def clip_pixels(image: torch.Tensor, size: int = CLIP_SIZE) -> torch.Tensor:
    """[V, 3, size, size] normalised CLIP pixel values of the RGB views ``image`` [V, H, W, 3] in 0..1."""
    views = []
    mean = np.asarray(CLIP_MEAN, dtype=np.float32)
    std = np.asarray(CLIP_STD, dtype=np.float32)
    for view in image:
        array = np.clip(np.round(view.detach().cpu().float().numpy() * 255.0), 0, 255).astype(np.uint8)
        height, width = array.shape[:2]
        new_h, new_w = resized_size(height, width, size)
        resized = np.asarray(Image.fromarray(array).resize((new_w, new_h), resample=Image.BICUBIC))
        top, left = (new_h - size) // 2, (new_w - size) // 2
        cropped = (resized[top:top + size, left:left + size] * (1 / 255)).astype(np.float32)  # as CLIPImageProcessor rescales
        views.append(torch.from_numpy(((cropped - mean) / std).transpose(2, 0, 1).copy()))
    return torch.stack(views)


MASK_THRESHOLD = 0.5  # the official binarisation of a mask query


def mask_grid(mask: torch.Tensor, grid: int, crop: bool = True, antialias: bool = True) -> torch.Tensor:
    """[V, grid, grid] mask of the subject on the CLIP patch grid, from masks [V, H, W] in 0..1.

    Binarised at 0.5 at full resolution, then (``crop``) cut to the image's centre-crop window
    so mask and image agree, then bilinearly resized (``align_corners=False``). The official
    code squashes the whole mask instead (``crop=False``), which misplaces it on non-square
    references; ``antialias`` is torchvision >= 0.17's default resize (False: <= 0.16).
    """
    binary = (mask.float() > MASK_THRESHOLD).to(torch.float32)
    if crop:
        window = crop_window(binary.shape[-2], binary.shape[-1])
        binary = binary[:, window.top:window.bottom, window.left:window.right]
    return F.interpolate(binary[:, None], size=(grid, grid), mode="bilinear", align_corners=False, antialias=antialias)[:, 0]
