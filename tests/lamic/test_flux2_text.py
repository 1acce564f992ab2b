"""FLUX.2 [dev]'s text groups: the left zero padding ComfyUI's own Flux2.extra_conds adds is the padding group.

ComfyUI 0.3.75 ships no Mistral (tekken) vocabulary: the FLUX.2 tokenizer reads it from the text-encoder
file (``tekken_model``), so the groups are located from what the model receives, not from token ids.
"""

from __future__ import annotations

import pytest
import torch

import comfy.text_encoders.flux

from devkit.incontext_tiny import FLUX2_TXT_DIM, seeded, tiny_flux2
from devkit.pack import pack

flux2 = pack("attention_patches.kinds.lamic.flux2")
flux2_text = pack("models.lamic.flux2_text")
SubjectSetupError = pack("attention_patches.kinds.base").SubjectSetupError


@pytest.fixture(scope="module")
def model():
    return tiny_flux2()


def model_context(model, tokens: int) -> torch.Tensor:
    """The context the diffusion model receives for an encoded text of ``tokens`` tokens (ComfyUI's extra_conds)."""
    conds = model.model.extra_conds(cross_attn=seeded(3, 1, tokens, FLUX2_TXT_DIM), pooled_output=None,
                                    noise=torch.zeros(1, 128, 4, 4), device=torch.device("cpu"))
    return conds["c_crossattn"].cond


def test_the_mistral_vocabulary_comes_with_the_text_encoder_file():
    with pytest.raises(TypeError):
        comfy.text_encoders.flux.Flux2Tokenizer(tokenizer_data={})  # no tekken_model: nothing to tokenise with


@pytest.mark.parametrize("tokens", [1, 37, 511])
def test_left_padding_is_the_padding_group(model, tokens):
    context = model_context(model, tokens)
    assert context.shape[1] == flux2_text.CONTEXT_TOKENS
    layout = flux2.Flux2Adapter().token_layout(torch.zeros(1, 128, 4, 4), context, [])
    spans = [(s.group, s.start, s.end) for s in layout.text_groups.spans]
    assert spans == [("EPrt", 0, 512 - tokens), ("CEI", 512 - tokens, 512)]


def test_a_long_text_has_no_padding_group(model):
    context = model_context(model, 600)
    layout = flux2.Flux2Adapter().token_layout(torch.zeros(1, 128, 4, 4), context, [])
    assert [(s.group, s.start, s.end) for s in layout.text_groups.spans] == [("CEI", 0, 600)]


def test_an_empty_text_is_named():
    with pytest.raises(SubjectSetupError, match="no text"):
        flux2.Flux2Adapter().token_layout(torch.zeros(1, 128, 4, 4), torch.zeros(1, 512, FLUX2_TXT_DIM), [])
