"""Preparing reference images for any kind: views, masks, background removal, phrase embeddings."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

import comfy.model_management as mm
import comfy.model_patcher

from ..models.sam import load_sam, segment
from ..models.safe_text import quoted

BACKGROUND = 1.0  # blanked background: white, like MS-Bench's product shots
MAX_REFERENCE_SIDE = 1024  # larger views are downscaled, one at a time, before anything is stacked
MAX_REFERENCE_VIEWS = 64
MAX_PHRASE_LENGTH = 200  # characters; a phrase is a noun or two, as in the prompt


class ReferenceError(ValueError):
    """A reference IMAGE or MASK that cannot be encoded; the message names the problem and the fix."""

# Penultimate hidden width of the CLIP-Vision families users load, for error messages.
IMAGE_ENCODER_FAMILIES = {
    1664: "CLIP-ViT-bigG (clip_vision_g.safetensors)",
    1280: "CLIP-ViT-H (clip_vision_h / CLIP-ViT-H-14, the IP-Adapter encoder)",
    1024: "CLIP-ViT-L",
    1152: "SigLIP",
    1536: "DINOv2",
}


def image_encoder_family(width: int) -> str:
    return IMAGE_ENCODER_FAMILIES.get(width, f"an image encoder with {width}-wide features")


def split_reference(image: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """RGB views and the subject mask (None if there is none).

    ``image`` is ComfyUI's [V, H, W, C] in 0..1 with C = 1 (grey), 2 (grey + alpha), 3 or 4
    (RGBA: alpha is a mask). ``mask`` is [M, h, w] (or [h, w]), white = subject; one mask
    serves every view, or one per view. Returns float32 ([V, H, W, 3], [V, H, W] or None), views
    larger than ``MAX_REFERENCE_SIDE`` downscaled to it.
    """
    _check_image(image)
    views, height, width, channels = image.shape
    scale = min(1.0, MAX_REFERENCE_SIDE / max(height, width))
    height, width = max(1, round(height * scale)), max(1, round(width * scale))
    image = torch.stack([_fit_view(image[v], height, width) for v in range(views)])
    if not torch.isfinite(image).all():
        bad = next(v for v in range(views) if not torch.isfinite(image[v]).all())
        raise ReferenceError(f"view {bad + 1} of the reference IMAGE has NaN or infinite pixels; "
                             "check the node that made it (ComfyUI images are numbers from 0 to 1)")
    alpha = image[..., -1] if channels in (2, 4) else None
    rgb = image[..., : 1 if channels <= 2 else 3]
    if rgb.shape[-1] == 1:
        rgb = rgb.expand(-1, -1, -1, 3)
    used = None
    if mask is not None:
        used = _fit_mask(mask, views, height, width).to(rgb)
    if alpha is not None:
        used = alpha if used is None else used * alpha
    if used is not None:
        _check_mask(used, mask is not None, alpha is not None)
    return rgb.contiguous(), None if used is None else used.clamp(0, 1)


def checked_phrase(phrase: str, name: str = "phrase", optional: bool = False) -> str:
    """The stripped phrase, or a named error when it is empty (unless ``optional``) or longer than ``MAX_PHRASE_LENGTH``."""
    phrase = phrase.strip() if isinstance(phrase, str) else ""
    if not phrase and not optional:
        raise ReferenceError(f"the {name} is empty; give the subject's noun as it appears in the prompt, e.g. 'dog'")
    if len(phrase) > MAX_PHRASE_LENGTH:
        raise ReferenceError(f"the {name} has {len(phrase)} characters; at most {MAX_PHRASE_LENGTH}: give the subject's "
                             f"noun as it appears in the prompt, e.g. 'dog' (got {quoted(phrase, 40)})")
    return phrase


MAX_DESCRIPTION_LENGTH = 2000  # characters; a sentence or a few about one subject


def checked_description(description: str) -> str:
    """The stripped description, or a named error when it is longer than ``MAX_DESCRIPTION_LENGTH``."""
    description = description.strip() if isinstance(description, str) else ""
    if len(description) > MAX_DESCRIPTION_LENGTH:
        raise ReferenceError(f"the description has {len(description)} characters; at most {MAX_DESCRIPTION_LENGTH}: "
                             "describe the subject in a sentence or a few")
    return description


def _check_image(image) -> None:
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[-1] not in (1, 2, 3, 4):
        shape = list(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ReferenceError(f"expected an IMAGE [views, height, width, channels], got {shape}")
    views, height, width, _ = image.shape
    if not views or not height or not width:
        raise ReferenceError(f"the reference IMAGE is empty (shape {list(image.shape)}): connect an image with at least one view")
    if views > MAX_REFERENCE_VIEWS:
        raise ReferenceError(f"the reference IMAGE has {views} views; at most {MAX_REFERENCE_VIEWS} views of one subject "
                             "are supported: pick the best few")
    if not image.is_floating_point():
        raise ReferenceError(f"the reference IMAGE holds {str(image.dtype).replace('torch.', '')} values; ComfyUI images "
                             "are floats from 0 to 1: convert it (e.g. divide 8-bit values by 255) before Encode Reference")


def _fit_view(view: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """One [H, W, C] view as float32 at ``height`` x ``width`` (antialiased when it shrinks)."""
    view = view.float()
    if view.shape[:2] == (height, width):
        return view
    return F.interpolate(view.movedim(-1, 0)[None], size=(height, width), mode="bilinear", antialias=True,
                         align_corners=False)[0].movedim(0, -1)


def _check_mask(mask: torch.Tensor, from_mask: bool, from_alpha: bool) -> None:
    """A NaN or all-black mask would silently encode a blank image: refused by name."""
    source = " and ".join(name for name, used in (("MASK", from_mask), ("alpha channel", from_alpha)) if used)
    if not torch.isfinite(mask).all():
        raise ReferenceError(f"the reference {source} has NaN or infinite values")
    empty = [v + 1 for v in range(mask.shape[0]) if not bool((mask[v] > 0).any())]
    if empty:
        views = ", ".join(map(str, empty[:8])) + (", ..." if len(empty) > 8 else "")
        raise ReferenceError(
            f"the reference {source} is all black (empty) for view(s) {views}: the subject would be a blank image. "
            "Paint the subject white in the mask, or disconnect the mask"
        )


def blank_background(rgb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Views with everything outside ``mask`` replaced by the plain background."""
    return rgb * mask[..., None] + BACKGROUND * (1 - mask[..., None])


def _fit_mask(mask: torch.Tensor, views: int, height: int, width: int) -> torch.Tensor:
    if mask.dim() == 2:
        mask = mask[None]
    if mask.dim() != 3 or not mask.numel():
        raise ReferenceError(f"expected a MASK [batch, height, width], got shape {list(mask.shape)}")
    if mask.shape[0] not in (1, views):
        raise ReferenceError(f"the MASK batch ({mask.shape[0]}) must be 1 or match the number of reference views ({views})")
    if mask.shape[1:] != (height, width):
        mask = F.interpolate(mask[:, None].float(), size=(height, width), mode="bilinear", antialias=True,
                             align_corners=False)[:, 0]
    return mask.float().expand(views, -1, -1)


_sam_cache: dict[str, comfy.model_patcher.ModelPatcher] = {}


def sam_patcher(path: str | Path) -> comfy.model_patcher.ModelPatcher:
    """The SAM model at ``path`` under a ModelPatcher (as ``.model["sam"]``); the last one used stays cached."""
    key = f"{Path(path).resolve()}:{Path(path).stat().st_mtime_ns}"
    if key not in _sam_cache:
        _sam_cache.clear()
        holder = torch.nn.ModuleDict({"sam": load_sam(path)})  # SAM's read-only .device clashes with ModelPatcher
        _sam_cache[key] = comfy.model_patcher.ModelPatcher(holder, load_device=mm.get_torch_device(),
                                                           offload_device=mm.unet_offload_device())
    return _sam_cache[key]


def segment_views(sam_path: str | Path, views: torch.Tensor, box: tuple[float, float, float, float] | None,
                  masks: torch.Tensor | None) -> torch.Tensor:
    """[V, H, W] subject masks SAM finds in each RGB view [V, H, W, 3], prompted by ``box`` or ``masks``."""
    patcher = sam_patcher(sam_path)
    mm.load_models_gpu([patcher])
    found = [
        segment(patcher.model["sam"], view, box, None if masks is None else masks[i]) for i, view in enumerate(views)
    ]
    return torch.stack(found).to(views)
