"""FLUX.2 [dev] as a LAMIC family: [text 512 | target | ref 1..n], references from ReferenceLatent.

- Model: ComfyUI's ``flux2`` (supported_models.Flux2): 128-channel latents at 1/16 of the pixels,
  patch 1, so one token per 16x16 px as on Kontext; boxes map to tokens on that 16-px grid.
- References: the conditioning's ``reference_latents`` (core's ReferenceLatent, one node per
  reference, chained in box order).
- Text: ``model_base.Flux2.extra_conds`` pads the Mistral context to 512 with zero vectors on the
  LEFT: those rows are the padding group EPrt, the rest (template and prompt) the CEI; there is no
  per-reference text, so no SAD group (``models.lamic.flux2_text``). The padding differs between a
  positive and a negative batched in one call, so such rows run one by one with their own masks.
- Ids: FLUX.2's own ``index`` method, reference k at (10k, y, x, 0); the mask enters through the
  masked-attention override like on Kontext (the same ``forward_orig``).
"""

from __future__ import annotations

import comfy.supported_models

from ....models.lamic import flux2_text
from ....models.lamic.text import text_layout
from ..base import SubjectSetupError
from .families import register
from .incontext import CallLayout, CallTextFamily, row_by_row, with_text_groups


def rows_differ(context) -> bool:
    """True when the rows of a batched context have different left padding (different text groups)."""
    pads = {flux2_text.left_padding(row) for row in context}
    return len(pads) > 1


@register
class Flux2Adapter(CallTextFamily):
    family = "FLUX.2 [dev]"
    patch_size = 1
    config_class = comfy.supported_models.Flux2
    missing_references = ("add core's ReferenceLatent node(s) to the positive conditioning, one per reference in box order "
                          "(VAE Encode with the FLUX.2 VAE, flux2-vae.safetensors)")

    def token_layout(self, x, context, ref_latents) -> CallLayout:
        layout = super().token_layout(x, context, ref_latents)
        spans = flux2_text.row_spans(context[0])
        if spans.cei[0] == spans.cei[1]:
            raise SubjectSetupError("the FLUX.2 conditioning holds no text (every context token is zero padding): encode "
                                    "the prompt with CLIP Text Encode and the FLUX.2 text encoder")
        pieces = [("CEI", spans.cei[1] - spans.cei[0])]
        return with_text_groups(layout, text_layout(pieces, layout.text, padding="left"))

    def install(self, model, wrapper) -> None:
        super().install(model, row_by_row(wrapper, rows_differ))
