"""FLUX.1 Kontext [dev] as LAMIC runs it: 512 T5 tokens, references with shared ids (1, y, x).

Kontext loads as ComfyUI's ``flux`` model (the same architecture as FLUX.1 [dev]; only the
reference latents of the conditioning make it Kontext). LAMIC's reference ids are reproduced by
the ``index`` reference method plus a post_input patch capping the first id axis at 1.
"""

from __future__ import annotations

from functools import lru_cache

import comfy.supported_models

from ....models.lamic import text

from ...dit import ids
from ..base import SubjectSetupError
from .families import FamilyAdapter, register

T5_TOKENS = 512
REFERENCE_INDEX = 1.0  # every reference at ids (1, y, x)


@lru_cache(maxsize=1)
def t5_tokenize():
    """ComfyUI's FLUX T5 tokenizer as LAMIC counts pieces: no padding, no prompt weights, </s> included."""
    from comfy.text_encoders.sd3_clip import T5XXLTokenizer

    return text.comfy_tokenize(T5XXLTokenizer(min_length=0))


@register
class KontextAdapter(FamilyAdapter):
    family = "FLUX.1 Kontext [dev]"
    patch_size = 2
    text_tokens = T5_TOKENS

    @classmethod
    def accepts(cls, model) -> bool:
        config = getattr(getattr(model, "model", None), "model_config", None)
        flux = cls.diffusion_model(model)
        return (type(config) is comfy.supported_models.Flux and flux is not None
                and not flux.params.global_modulation and flux.params.guidance_embed)

    def check_context(self, context) -> None:
        if context.shape[1] != T5_TOKENS:
            raise SubjectSetupError(
                f"LAMIC on FLUX.1 Kontext needs the text encoded to exactly {T5_TOKENS} T5 tokens (its groups address "
                f"them), this conditioning has {context.shape[1]}. Put core's T5TokenizerOptions node (min_length "
                f"{T5_TOKENS}) between the CLIP loader and every CLIP Text Encode of this model, positive and negative; "
                f"a text over {T5_TOKENS} tokens must be shortened")

    def text_layout(self, sad_texts, cei: str, context_tokens: int, official: bool = True):
        try:
            return text.lamic_text_layout(t5_tokenize(), sad_texts, cei, length=context_tokens, official=official)
        except text.TextTooLongError as e:
            raise SubjectSetupError(f"{e} (LAMIC addresses {T5_TOKENS} T5 tokens; the descriptions count too)") from None

    def call_kwargs(self, kwargs: dict) -> dict:
        return {**kwargs, "ref_latents_method": "index"}

    def id_context(self):
        return ids.reference_index_limit(REFERENCE_INDEX)

    def install_id_patch(self, model) -> None:
        ids.install_clamp(model)
