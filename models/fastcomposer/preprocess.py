"""Reference image -> what FastComposer's vision tower sees, exactly as the official transforms.

Official order (``transforms.PadToSquare``, ``T.Resize``, ``FastComposerCLIPImageEncoder``):
pad to square with black ((long - short) // 2 on both sides, so an odd difference stays one
pixel short), bilinear antialiased resize to R x R on uint8 (round back to uint8), / 255,
a float bilinear antialiased resize to the encoder's size when R differs, CLIP mean/std.
No centre crop, no bicubic (ComfyUI's ``clip_preprocess`` does both, so it is not used).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
OBJECT_RESOLUTION = 224  # inference.py and the evaluation (the gradio demo and cog use 256)


def to_uint8_chw(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI's [H, W, 3] float 0..1 -> [3, H, W] uint8 (exact for images loaded from 8-bit files)."""
    return (image.float() * 255.0).round().clamp(0, 255).to(torch.uint8).permute(2, 0, 1).contiguous()


def replace_background(image: torch.Tensor, keep: torch.Tensor, background: torch.Tensor | float = 0) -> torch.Tensor:
    """``image`` where ``keep`` is true, ``background`` elsewhere (training's ``SegmentProcessor`` used random noise).

    ``image`` [..., C, H, W] or [..., H, W, C] with ``keep`` broadcastable to it.
    """
    return torch.where(keep, image, torch.as_tensor(background, dtype=image.dtype, device=image.device))


def pad_to_square(image: torch.Tensor) -> torch.Tensor:
    """[C, H, W] padded with zeros on the short axis, (long - short) // 2 on each side."""
    _, height, width = image.shape
    if height == width:
        return image
    pad = abs(height - width) // 2
    padding = (pad, pad, 0, 0) if height > width else (0, 0, pad, pad)
    return F.pad(image, padding, mode="constant", value=0)


def resize_uint8(image: torch.Tensor, resolution: int) -> torch.Tensor:
    """[C, H, W] uint8 -> [C, R, R] uint8: bilinear, antialiased, computed in float and rounded."""
    resized = F.interpolate(image[None].float(), size=(resolution, resolution), mode="bilinear",
                            align_corners=False, antialias=True)[0]
    return resized.round().clamp(0, 255).to(torch.uint8)


def object_pixels(image: torch.Tensor, resolution: int = OBJECT_RESOLUTION) -> torch.Tensor:
    """[3, H, W] uint8 reference -> [3, R, R] float in 0..1 (the official ``object_pixel_values``)."""
    return resize_uint8(pad_to_square(image), resolution).float() / 255.0


def vision_input(pixels: torch.Tensor, image_size: int) -> torch.Tensor:
    """[N, 3, R, R] object pixels -> [N, 3, S, S] normalised input of a vision tower of size S."""
    if pixels.shape[-2:] != (image_size, image_size):
        pixels = F.interpolate(pixels, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(CLIP_MEAN, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    return (pixels - mean) / std


def reference_vision_input(views: torch.Tensor, image_size: int, resolution: int = OBJECT_RESOLUTION) -> torch.Tensor:
    """ComfyUI IMAGE views [V, H, W, 3] (0..1) -> [V, 3, S, S], each view preprocessed on its own."""
    pixels = torch.stack([object_pixels(to_uint8_chw(view), resolution) for view in views])
    return vision_input(pixels, image_size)
