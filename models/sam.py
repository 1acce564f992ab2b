"""Segment-anything for clean references: variant detection from keys, building, prompting.

``segment_anything`` is imported only when a SAM model is actually used, so the pack loads
without it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .safe_load import CheckpointError, read_tensors

# patch-embedding width of each image encoder variant
SAM_VARIANTS = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}
PATCH_EMBED_KEY = "image_encoder.patch_embed.proj.weight"
INSTALL_HINT = "pip install segment-anything (in ComfyUI's Python environment)"


class SamFormatError(CheckpointError):
    pass


def sam_variant(state_dict: dict[str, torch.Tensor]) -> str:
    """vit_b / vit_l / vit_h from the image encoder's width."""
    weight = state_dict.get(PATCH_EMBED_KEY)
    if weight is None:
        raise SamFormatError(
            "not a segment-anything checkpoint (no image_encoder.patch_embed): use sam_vit_b_01ec64.pth, "
            "sam_vit_l_0b3195.pth or sam_vit_h_4b8939.pth in models/sams"
        )
    width = weight.shape[0]
    if width not in SAM_VARIANTS:
        raise SamFormatError(f"unknown segment-anything image encoder width {width}; expected one of {sorted(SAM_VARIANTS)}")
    return SAM_VARIANTS[width]


def _segment_anything():
    try:
        import segment_anything
    except ImportError as e:
        raise ImportError(f"background removal needs the segment-anything package: {INSTALL_HINT}") from e
    return segment_anything


def build_sam(state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    model = _segment_anything().sam_model_registry[sam_variant(state_dict)](checkpoint=None)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        raise SamFormatError(f"the segment-anything checkpoint does not match its architecture: {e}") from e
    return model.eval().requires_grad_(False)


def load_sam(path: str | Path) -> torch.nn.Module:
    state_dict, _metadata = read_tensors(path, SamFormatError)
    return build_sam(state_dict)


@torch.no_grad()
def segment(model: torch.nn.Module, image: torch.Tensor, box: tuple[float, float, float, float] | None = None,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """[H, W] 0/1 mask of the object SAM finds in ``image`` [H, W, 3] (0..1).

    Prompted by a normalised box (default: the whole image) and, if given, a rough [H, W] mask
    (its bounding box and its shape both guide SAM).
    """
    height, width = image.shape[:2]
    predictor = _segment_anything().SamPredictor(model)
    predictor.set_image((image.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy())
    mask_logits = None
    if mask is not None and mask.max() > 0:
        ys, xs = torch.nonzero(mask > 0.5, as_tuple=True)
        if len(ys):
            box = (xs.min().item() / width, ys.min().item() / height, (xs.max().item() + 1) / width, (ys.max().item() + 1) / height)
        mask_logits = _mask_prompt(predictor, mask)
    x1, y1, x2, y2 = box if box is not None else (0.0, 0.0, 1.0, 1.0)
    pixel_box = np.array([x1 * width, y1 * height, x2 * width, y2 * height], dtype=np.float32)
    masks, scores, _ = predictor.predict(box=pixel_box, mask_input=mask_logits, multimask_output=True)
    return torch.from_numpy(masks[int(np.argmax(scores))].astype(np.float32))


def _mask_prompt(predictor, mask: torch.Tensor) -> np.ndarray:
    """A rough mask as SAM's low-resolution (256 x 256) logit prompt, in its padded input frame."""
    size = predictor.model.image_encoder.img_size
    height, width = predictor.original_size
    scale = size / max(height, width)
    resized = torch.nn.functional.interpolate(
        mask[None, None].float(), size=(round(height * scale), round(width * scale)), mode="bilinear", align_corners=False
    )
    padded = torch.nn.functional.pad(resized, (0, size - resized.shape[-1], 0, size - resized.shape[-2]))
    low = torch.nn.functional.interpolate(padded, size=(size // 4, size // 4), mode="bilinear", align_corners=False)
    return ((low[0] - 0.5) * 20).numpy()
