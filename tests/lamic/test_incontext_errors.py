"""Wrong inputs around Qwen-Image-Edit-2509 and FLUX.2: each a named error (on Apply where it can be known there)."""

from __future__ import annotations

import pytest
import torch

from devkit import anystory_tiny as tiny_flux
from devkit import tiny_models
from lamic.incontext_support import LEFT, RIGHT, sample
from devkit.incontext_tiny import flux2_conditioning, qwen_conditioning, tiny_flux2, tiny_qwen_image
from devkit.pack import pack

base = pack("attention_patches.kinds.base")
layout_mod = pack("attention_patches.layout")
encoder_mod = pack("attention_patches.kinds.lamic.encoder")
qwen_text = pack("models.lamic.qwen_text")
SetupError = base.SubjectSetupError


@pytest.fixture(scope="module")
def lamic():
    return encoder_mod.LamicEncoder.builtin()


def subjects(count):
    images = torch.rand(count, 1, 32, 32, 3, generator=torch.Generator().manual_seed(3))
    return tuple(base.Subject(base.Reference(f"subject {i + 1}", images[i])) for i in range(count))


def apply(lamic, model, count, boxes, prompt="anything"):
    layout = layout_mod.Layout(tuple(layout_mod.LayoutBox(*b) for b in boxes), 128, 128)
    return lamic.apply(model, subjects(count), layout, base.ApplySettings(prompt=prompt))


def qwen_text_tokens(count):
    return count * (7 + qwen_text.vision_tokens_for_latent(8, 8)) + 10


def test_an_sd_model_names_the_in_context_families(lamic):
    with pytest.raises(SetupError, match=r"in-context model \(.*Qwen-Image-Edit-2509.*UNetModel"):
        apply(lamic, tiny_models.tiny_sd15_model(), 2, [LEFT, RIGHT])


def test_more_boxes_than_references_on_apply(lamic):
    with pytest.raises(SetupError, match="3 box"):
        apply(lamic, tiny_qwen_image(layers=1), 2, [LEFT, RIGHT, (0.0, 0.0, 1.0, 1.0)])


def test_qwen_image_without_references_is_not_an_edit(lamic):
    """Qwen-Image and Qwen-Image-Edit load as the same model: a conditioning without reference images names the fix."""
    patched = apply(lamic, tiny_qwen_image(layers=1), 2, [LEFT, RIGHT])
    plain = qwen_conditioning(1, 12, [])
    with pytest.raises(SetupError, match="TextEncodeQwenImageEditPlus.*qwen_image_edit_2509"):
        sample(patched, torch.zeros(1, 16, 1, 16, 16), plain, plain)


def test_qwen_more_boxes_than_conditioning_references(lamic):
    patched = apply(lamic, tiny_qwen_image(layers=1), 3, [LEFT, RIGHT, (0.0, 0.0, 1.0, 1.0)])
    cond = qwen_conditioning(1, qwen_text_tokens(2), [(64, 64), (64, 64)])
    with pytest.raises(SetupError, match="2 reference latent.*3 box"):
        sample(patched, torch.zeros(1, 16, 1, 16, 16), cond, cond)


def test_flux1_where_flux2_is_needed(lamic):
    """A FLUX.1 model given FLUX.2 references (128-channel latents): named, not a shape error deep in the model."""
    patched = apply(lamic, tiny_flux.tiny_flux_model(), 2, [LEFT, RIGHT], prompt="subject 1subject 2 in a park")
    cond = flux2_conditioning(1, 512, [(64, 64), (64, 64)])
    cond[0][0] = torch.zeros(1, 512, tiny_flux.TXT_DIM)
    cond[0][1]["pooled_output"] = torch.zeros(1, tiny_flux.POOLED_DIM)
    with pytest.raises(SetupError, match="128-channel latent.*FLUX.1 Kontext.*16 channels"):
        sample(patched, torch.zeros(1, 16, 16, 16), cond, cond)


def test_flux2_without_references(lamic):
    patched = apply(lamic, tiny_flux2(), 2, [LEFT, RIGHT])
    cond = flux2_conditioning(1, 9, [])
    with pytest.raises(SetupError, match="FLUX.2.*ReferenceLatent"):
        sample(patched, torch.zeros(1, 128, 8, 8), cond, cond)
