"""Reference images -> LAMIC's reference tokens, and LAMIC's size rules.

Official chain (``LamicProcessor.resize_and_preprocess_ref_img``): floor the size to multiples of
16; with ``to_area``, r = sqrt(to_area / (h * w)) on the floored size, (int(h * r), int(w * r)), and
the original is Lanczos-resized to that; floor to 16 again and Lanczos-resize again (a second
resampling; a resize to the same size is a copy, as in PIL). ComfyUI's ``common_upscale(...,
"lanczos")`` on a [0, 1] IMAGE gives the official pixels exactly. The VAE latent is normalised by
the model's latent format ((z - 0.1159) * 0.3611 for FLUX.1), then multiplied by the reference's
``enhance_factor``, then packed 2x2 with features in (c, ph, pw) order.

``output_size`` is ``resize_output_size`` (on in the official script): about 1 MP at the requested
aspect, floored to 16, which also enlarges small requests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SIZE_MULTIPLE = 16  # vae_scale_factor * 2
OUTPUT_AREA = 1024 ** 2
MAX_REFERENCE_PIXELS = 4096 ** 2  # a to_area beyond this would only exhaust memory


def floor_size(height: int, width: int, multiple: int = SIZE_MULTIPLE) -> tuple[int, int]:
    return height // multiple * multiple, width // multiple * multiple


def area_size(height: int, width: int, area: float) -> tuple[int, int]:
    """``resize_to_area``: scale to about ``area`` pixels, both sides truncated."""
    ratio = (area / (height * width)) ** 0.5
    return int(height * ratio), int(width * ratio)


def output_size(height: int, width: int, max_area: int = OUTPUT_AREA, multiple: int = SIZE_MULTIPLE) -> tuple[int, int]:
    """``resize_output_size``: (round(sqrt(area * h / w)), round(sqrt(area * w / h))), floored to ``multiple``."""
    aspect = width / height
    return floor_size(round((max_area / aspect) ** 0.5), round((max_area * aspect) ** 0.5), multiple)


@dataclass(frozen=True)
class ReferenceSizes:
    """The official size chain of one reference: (h, w) after each step, and its token grid."""

    floored: tuple[int, int]
    to_area: tuple[int, int] | None
    final: tuple[int, int]

    @property
    def tokens(self) -> tuple[int, int]:
        return self.final[0] // SIZE_MULTIPLE, self.final[1] // SIZE_MULTIPLE


def reference_sizes(height: int, width: int, to_area: float | None = None) -> ReferenceSizes:
    """The size chain for an ``height`` x ``width`` reference (``to_area`` in pixels, or None)."""
    floored = floor_size(height, width)
    scaled = None
    if to_area is not None:
        if not 0 < to_area <= MAX_REFERENCE_PIXELS or not math.isfinite(to_area):
            raise ValueError(f"to_area must be in (0, {MAX_REFERENCE_PIXELS}] pixels, got {to_area}")
        if min(floored) == 0:
            raise ValueError(f"a {height}x{width} reference is below {SIZE_MULTIPLE} px; to_area cannot scale it")
        scaled = area_size(*floored, to_area)
    final = floor_size(*(scaled or floored))
    if min(final) == 0:
        raise ValueError(f"reference is {height}x{width} px; after LAMIC's resizing it would be {final[0]}x{final[1]}: "
                         f"use an image of at least {SIZE_MULTIPLE}x{SIZE_MULTIPLE} px")
    return ReferenceSizes(floored, scaled, final)


def resize_reference(image: torch.Tensor, to_area: float | None = None) -> torch.Tensor:
    """A ComfyUI IMAGE [B, H, W, C] in [0, 1] through the official resize chain (Lanczos via ComfyUI)."""
    import comfy.utils

    sizes = reference_sizes(image.shape[1], image.shape[2], to_area)
    pixels = image.movedim(-1, 1)
    for height, width in ([sizes.to_area] if sizes.to_area else []) + [sizes.final]:
        if (height, width) != tuple(pixels.shape[-2:]):
            pixels = comfy.utils.common_upscale(pixels, width, height, "lanczos", "disabled")
    return pixels.movedim(1, -1)


def enhance_latent(latent: torch.Tensor, factor: float, shift: float = 0.0) -> torch.Tensor:
    """LAMIC's ``enhance_factor``: it scales the normalised latent, i.e. shift + factor * (latent - shift).

    On a normalised latent ``shift`` is 0. On a raw VAE latent that ComfyUI will normalise later
    (``process_latent_in``), pass the latent format's shift (0.1159 for FLUX.1): the result then
    normalises to factor times the normalised latent.
    """
    return shift + factor * (latent - shift) if factor != 1.0 else latent


def pack_tokens(latent: torch.Tensor, patch: int = 2) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/p)(W/p), C*p*p] with features in (c, ph, pw) order, tokens row-major."""
    b, c, h, w = latent.shape
    grid = latent.reshape(b, c, h // patch, patch, w // patch, patch)
    return grid.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // patch) * (w // patch), c * patch * patch)

