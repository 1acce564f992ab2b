"""Node classes: documented inputs/outputs, Encode Reference behaviour, phrase encoding parity."""

import pytest
import torch

from devkit.helpers import apply, encode_subjects, layout, reference_image
from devkit.pack import pack

nodes = pack("nodes")
references = pack("attention_patches.references")
ms_diffusion = pack("attention_patches.kinds.ms_diffusion.encoder")
registry = pack("attention_patches.kinds.registry")

DOCUMENTED = {
    "MSP_LoadSubjectEncoder": (["encoder_name", "style_model"], ["MSP_SUBJECT_ENCODER"]),
    "MSP_EncodeReference": (["clip_vision", "clip", "image", "phrase", "mask", "subjects", "background_removal", "sam_box",
                             "subject_encoder", "vae", "query", "mask_weight", "description"],
                            ["MSP_SUBJECTS", "MASK"]),
    "MSP_DrawLayoutBox": (["boxes", "width", "height", "preset", "image", "mask"], ["MSP_LAYOUT"]),
    "MSP_ApplyMultiSubjectAttention": (["model", "subject_encoder", "subjects", "layout", "scale", "subject_scales",
                                        "start_percent", "end_percent", "drop_grounding", "auto_routing", "prompt",
                                        "mask_threshold", "start_step", "feather", "kind_settings", "record_routes"], ["MODEL", "MSP_ROUTES"]),
    "MSP_RouterMaskPreview": (["routes", "latent", "image", "steps", "layers"], ["IMAGE", "MASK"]),
}


def test_nodes_expose_the_documented_inputs_and_outputs():
    registered = {cls.define_schema().node_id: cls for cls in nodes.NODES}
    settings_nodes = {f"MSP_KindSettings_{kind.kind}" for kind in registry.KINDS if kind.capabilities.settings}
    assert settings_nodes, "at least one kind (LAMIC) declares settings of its own"
    assert set(registered) == set(DOCUMENTED) | settings_nodes  # the five nodes and one settings node per kind with settings
    for node_id, (inputs, outputs) in DOCUMENTED.items():
        schema = registered[node_id].define_schema()
        assert [i.id for i in schema.inputs] == inputs, node_id
        assert [o.get_io_type() for o in schema.outputs] == outputs, node_id
        info = registered[node_id].GET_NODE_INFO_V1()
        assert info["display_name"] and info["category"] == "multi_subject"
    assert registered["MSP_RouterMaskPreview"].define_schema().is_output_node


def test_phrase_is_clip_l_unprojected_pooled_output(tiny_clip):
    """Against Hugging Face's CLIPTextModel.pooler_output with the same weights (the official pipeline's call)."""
    import os

    import comfy.sd1_clip
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    clip_l = tiny_clip.cond_stage_model.clip_l.transformer
    config = CLIPTextConfig(vocab_size=49408, hidden_size=clip_l.text_model.embeddings.token_embedding.weight.shape[1],
                            intermediate_size=128, num_hidden_layers=3, num_attention_heads=2, max_position_embeddings=77,
                            hidden_act="quick_gelu", eos_token_id=49407, bos_token_id=49406, pad_token_id=49407)
    reference = CLIPTextModel(config).eval()
    state = {k: v for k, v in clip_l.state_dict().items() if k.startswith("text_model.")}
    missing, unexpected = reference.load_state_dict(state, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing)
    tokenizer = CLIPTokenizer.from_pretrained(os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "sd1_tokenizer"))
    for phrase in ("dog", "red leather hat"):
        ids = tokenizer(phrase, max_length=77, padding="max_length", truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            expected = reference(ids).pooler_output[0]
        assert torch.allclose(ms_diffusion.encode_phrase(tiny_clip, phrase), expected, atol=1e-4)
    # the CLIP's options are left as they were
    assert tiny_clip.cond_stage_model.clip_l.return_projected_pooled is True


def test_encode_reference_chains_and_averages_views(tiny_vision, tiny_clip, tiny_encoder):
    subjects = encode_subjects(tiny_vision, tiny_clip, ["dog", "cat", "dog"])
    assert [s.phrase for s in subjects] == ["dog", "cat", "dog"]
    views = reference_image(3, views=4)
    out = nodes.EncodeReference.execute(clip_vision=tiny_vision, clip=tiny_clip, image=views, phrase="  hat ", subjects=subjects)
    chained, mask = out.args
    assert len(chained) == 4 and chained[-1].phrase == "hat"
    assert chained[-1].encoded(tiny_encoder).image_features.shape[0] == 4  # one row per view; the resampler averages them at Apply
    assert mask.shape == (4, 64, 48) and mask.min() == 1


def test_mask_and_alpha_blank_the_background(tiny_vision, tiny_clip, tiny_encoder):
    image = reference_image(5)
    mask = torch.zeros(1, 32, 24)
    mask[:, 8:24, 6:18] = 1.0
    masked = nodes.EncodeReference.execute(clip_vision=tiny_vision, clip=tiny_clip, image=image, phrase="dog", mask=mask)
    subject, used = masked.args[0][0], masked.args[1]
    assert used.shape == (1, 64, 48) and used[0, 0, 0] == 0 and used[0, 32, 24] == 1
    rgba = torch.cat([image, used[..., None]], dim=-1)
    from_alpha = nodes.EncodeReference.execute(clip_vision=tiny_vision, clip=tiny_clip, image=rgba, phrase="dog")
    assert torch.allclose(from_alpha.args[0][0].encoded(tiny_encoder).image_features, subject.encoded(tiny_encoder).image_features, atol=1e-5)
    plain = nodes.EncodeReference.execute(clip_vision=tiny_vision, clip=tiny_clip, image=image, phrase="dog")
    assert not torch.allclose(plain.args[0][0].encoded(tiny_encoder).image_features, subject.encoded(tiny_encoder).image_features)
    blank = references.blank_background(image[..., :3], used)
    assert torch.all(blank[0, 0, 0] == 1.0) and torch.equal(blank[0, 32, 24], image[0, 32, 24])


@pytest.mark.parametrize("shape", [(1, 1, 1, 3), (1, 40, 30, 1), (2, 50, 50, 2), (16, 32, 32, 3)])
def test_odd_references_encode(tiny_vision, tiny_clip, tiny_encoder, shape):
    """1-pixel, grey, grey + alpha and a batch of 16 views."""
    image = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    subjects, mask = nodes.EncodeReference.execute(clip_vision=tiny_vision, clip=tiny_clip, image=image, phrase="dog").args
    assert subjects[0].encoded(tiny_encoder).image_features.shape[:2] == (shape[0], 257)
    assert torch.isfinite(subjects[0].encoded(tiny_encoder).image_features).all() and mask.shape == shape[:3]


def test_empty_phrase_is_refused(tiny_vision, tiny_clip):
    with pytest.raises(ValueError, match="phrase is empty"):
        nodes.EncodeReference.execute(clip_vision=tiny_vision, clip=tiny_clip, image=reference_image(0), phrase="   ")


def test_mask_batch_must_fit_the_views(tiny_vision, tiny_clip):
    with pytest.raises(ValueError, match="MASK batch"):
        nodes.EncodeReference.execute(clip_vision=tiny_vision, clip=tiny_clip, image=reference_image(0, views=3),
                                      phrase="dog", mask=torch.ones(2, 8, 8))


def test_subject_scales_and_time_window(tiny_unet, tiny_encoder, tiny_vision, tiny_clip):
    subjects = encode_subjects(tiny_vision, tiny_clip, ["dog", "cat"])
    lay = layout([(0, 0, 0.5, 1), (0.5, 0, 1, 1)])
    model, _ = apply(tiny_unet, tiny_encoder, subjects, lay, subject_scales="0.5, 0.9", start_percent=0.2, end_percent=0.8)
    routing_ = model.model_options["transformer_options"]["patches_replace"]["attn2"][("input", 4, 0)].routings[0]
    start, end = routing_.sigma_range
    assert start > end > 0
    assert not routing_.is_active({"sigmas": torch.tensor([start * 1.01])})
    assert routing_.is_active({"sigmas": torch.tensor([(start + end) / 2])})
    assert not routing_.is_active({"sigmas": torch.tensor([end * 0.99])})
    unscaled, _ = apply(tiny_unet, tiny_encoder, subjects, lay, scale=1.0)
    plain = unscaled.model_options["transformer_options"]["patches_replace"]["attn2"][("input", 4, 0)].routings[0]
    values, reference_values = routing_.bank.layer(("input", 4, 0)).value, plain.bank.layer(("input", 4, 0)).value
    assert torch.allclose(values[0], reference_values[0] * 0.5, atol=1e-6)
    assert torch.allclose(values[1], reference_values[1] * 0.9, atol=1e-6)
    with pytest.raises(ValueError, match="numbers separated by commas"):
        apply(tiny_unet, tiny_encoder, subjects, lay, subject_scales="half")
    with pytest.raises(ValueError, match="one scale per subject"):
        apply(tiny_unet, tiny_encoder, subjects, lay, subject_scales="0.5")
    with pytest.raises(ValueError, match="start_percent"):
        apply(tiny_unet, tiny_encoder, subjects, lay, start_percent=0.9, end_percent=0.1)


def test_drop_grounding_uses_the_learned_latents(tiny_unet, tiny_encoder, tiny_vision, tiny_clip):
    subjects = encode_subjects(tiny_vision, tiny_clip, ["dog"])
    boxes = torch.tensor([[0.1, 0.1, 0.6, 0.6]])
    features = [subjects[0].encoded(tiny_encoder).image_features]
    phrase = subjects[0].encoded(tiny_encoder).phrase_embedding[None]
    grounded = tiny_encoder.encode_subjects(features, phrase, boxes, False)
    dropped = tiny_encoder.encode_subjects(features, phrase, boxes, True)
    moved = tiny_encoder.encode_subjects(features, phrase, boxes + 0.3, True)
    assert not torch.allclose(grounded, dropped)
    assert torch.allclose(dropped, moved)  # without grounding, the box does not matter
