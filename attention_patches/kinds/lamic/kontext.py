"""FLUX.1 Kontext [dev] as LAMIC runs it: 512 T5 tokens, references with shared ids (1, y, x).

Kontext loads as ComfyUI's ``flux`` model (the same architecture as FLUX.1 [dev]; only the
reference latents of the conditioning make it Kontext). LAMIC's reference ids are reproduced by
the ``index`` reference method plus a post_input patch capping the first id axis at 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import comfy.supported_models

from ...dit import ids
from ..base import SubjectSetupError
from .families import FamilyAdapter, TextSpans, register

T5_TOKENS = 512
REFERENCE_INDEX = 1.0  # every reference at ids (1, y, x)


@lru_cache(maxsize=1)
def t5_tokenizer():
    """ComfyUI's FLUX T5 tokenizer without padding: piece lengths count the real tokens and </s>."""
    from comfy.text_encoders.sd3_clip import T5XXLTokenizer

    return T5XXLTokenizer(min_length=0)


def t5_length(text: str) -> int:
    """T5 tokens of ``text`` including its </s>, as ComfyUI tokenises it (prompt weights parsed)."""
    return sum(len(chunk) for chunk in t5_tokenizer().tokenize_with_weights(text))


@register
class KontextAdapter(FamilyAdapter):
    family = "FLUX.1 Kontext [dev]"
    patch_size = 2

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

    def piece_lengths(self, pieces: Sequence[str]) -> list[int]:
        return [t5_length(piece) for piece in pieces]

    def text_spans(self, piece_lengths: Sequence[int], context_tokens: int) -> TextSpans:
        spans, start = [], 0
        for length in piece_lengths:
            spans.append((start, start + length))
            start += length
        if start > context_tokens:
            raise SubjectSetupError(f"the descriptions and the prompt take {start} T5 tokens; LAMIC addresses at most "
                                    f"{context_tokens}: shorten the descriptions or the prompt")
        return TextSpans(tuple(spans), (start, context_tokens))

    def call_kwargs(self, kwargs: dict) -> dict:
        return {**kwargs, "ref_latents_method": "index"}

    def id_context(self):
        return ids.reference_index_limit(REFERENCE_INDEX)

    def install_id_patch(self, model) -> None:
        ids.install_clamp(model)
