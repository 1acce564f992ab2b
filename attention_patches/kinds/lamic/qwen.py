"""Qwen-Image-Edit-2509 as a LAMIC family: [text | target | ref 1..n], references from TextEncodeQwenImageEditPlus.

- Model: ComfyUI's ``qwen_image`` (Qwen-Image and its Edit models share classes and keys; only the
  reference latents in the conditioning make it an edit). Patch 2 on 16-channel 5-D latents.
- References: the conditioning's ``reference_latents`` (image1..3 of TextEncodeQwenImageEditPlus with
  its vae connected), in order: reference i is box i. Nothing is encoded again.
- Text: picture i's piece ("Picture i: <|vision_start|>...<|vision_end|>") is SAD_i, the prompt and
  the template tail the CEI, no padding group (``models.lamic.qwen_text``); built per call from the
  actual text length, so a positive and a negative of different lengths each get their own mask
  (ComfyUI never batches Qwen rows of different lengths: its context is a plain CONDRegular).
- Ids: Qwen's own ``index`` method (reference k at (k, y, x), centred); LAMIC's shared ids would
  need a block replacement, and the model was trained with its own.
- Mask: the blocks pass no mask; every joint attention calls ``optimized_attention_masked`` with the
  mask as 5th positional argument, which the masked-attention override replaces.
- The diffusion model's ``_forward`` takes (x, timesteps, context, attention_mask, guidance,
  ref_latents, transformer_options, control=...), so the kind's FLUX-signature wrapper is adapted.
"""

from __future__ import annotations

import comfy.patcher_extension
import comfy.supported_models

from ....models.lamic import qwen_text
from ....models.lamic.text import text_layout
from ...dit import masked_attention
from ..base import SubjectSetupError
from .families import WRAPPER_KEY, register
from .incontext import CallLayout, CallTextFamily, with_text_groups


def flux_signature(wrapper):
    """Qwen's DIFFUSION_MODEL wrapper calling a wrapper written for FLUX's ``_forward`` signature."""

    def qwen_wrapper(executor, x, timestep, context, attention_mask, guidance, ref_latents, transformer_options, **kwargs):
        control = kwargs.pop("control", None)

        def flux_executor(x, timestep, context, y, guidance, ref_latents, control, transformer_options, **kwargs):
            return executor(x, timestep, context, y, guidance, ref_latents, transformer_options, control=control, **kwargs)

        return wrapper(flux_executor, x, timestep, context, attention_mask, guidance, ref_latents, control,
                       transformer_options, **kwargs)

    return qwen_wrapper


@register
class QwenEditAdapter(CallTextFamily):
    family = "Qwen-Image-Edit-2509"
    patch_size = 2
    config_class = comfy.supported_models.QwenImage
    missing_references = ("encode the prompt with TextEncodeQwenImageEditPlus with its vae connected and the reference "
                          "images on image1, image2, image3 in box order (a Qwen-Image model without reference images "
                          "is not an edit model: load qwen_image_edit_2509)")

    def token_layout(self, x, context, ref_latents) -> CallLayout:
        layout = super().token_layout(x, context, ref_latents)
        counts = [qwen_text.vision_tokens_for_latent(r.shape[-2], r.shape[-1]) for r in ref_latents]
        try:
            spans = qwen_text.edit_spans(layout.text, counts)
        except qwen_text.QwenTextError as e:
            raise SubjectSetupError(str(e)) from None
        pieces = [(f"SAD_{i}", end - start) for i, (start, end) in enumerate(spans.pictures, start=1)]
        pieces.append(("CEI", spans.cei[1] - spans.cei[0]))
        return with_text_groups(layout, text_layout(pieces, layout.text, padding="none"))

    def install(self, model, wrapper) -> None:
        model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, flux_signature(wrapper))
        masked_attention.install(model)
