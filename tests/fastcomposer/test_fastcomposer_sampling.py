"""FastComposer through the real sampler on a tiny SD1.5-topology UNet.

Every model call of a CFG run is checked against the unpatched model on the same inputs:
before the switch the output is identical; after it the negative rows are identical and the
positive rows are exactly the unpatched model's output on the official augmented conditioning
(the text-only context with the fused vectors at the people's tokens). With a layout each
person's fused token changes a cross-attention's output only inside that person's box.
"""

from __future__ import annotations

import logging

import pytest
import torch

import comfy.ldm.modules.attention as comfy_attention
import comfy.patcher_extension
import comfy.sample
import comfy.samplers
from devkit.helpers import encode_text, layout, reference_image
from devkit.pack import pack
from devkit.tiny_models import tiny_sd15_model, tiny_sdxl_model
from devkit.tiny_sd15_fastcomposer import save_fastcomposer, tiny_sd15_clip

nodes = pack("nodes")
base = pack("attention_patches.kinds.base")
registry = pack("attention_patches.kinds.registry")
fusion_patch = pack("attention_patches.kinds.fastcomposer.fusion_patch")
lifecycle = pack("attention_patches.lifecycle")
unet_blocks = pack("attention_patches.unet.blocks")
delay = pack("models.fastcomposer.delay")

PROMPT = "a man and a woman at the beach"
PHRASES = ("man", "woman")
LATENT = (1, 4, 16, 16)
STEPS = 6
CFG = 5.0


@pytest.fixture(scope="module")
def unet():
    return tiny_sd15_model()


@pytest.fixture(scope="module")
def clip():
    return tiny_sd15_clip()


@pytest.fixture(scope="module")
def encoder_path(unet, tmp_path_factory):
    return save_fastcomposer(tmp_path_factory.mktemp("fastcomposer") / "fastcomposer_encoder.safetensors", unet=unet)


@pytest.fixture(scope="module")
def encoder(encoder_path):
    return registry.load_subject_encoder(encoder_path)


@pytest.fixture(scope="module")
def people(encoder, clip):
    subjects = None
    for i, phrase in enumerate(PHRASES):
        out = nodes.EncodeReference.execute(clip_vision=None, clip=clip, image=reference_image(20 + i, views=2 if i else 1),
                                            phrase=phrase, subjects=subjects, subject_encoder=encoder)
        subjects = out.args[0]
    return subjects


def apply(model, encoder, subjects, layout_=None, **kwargs):
    args = dict(model=model, subject_encoder=encoder, subjects=subjects, layout=layout_, scale=0.6, start_percent=0.0,
                end_percent=1.0, drop_grounding=False, prompt=PROMPT)
    args.update(kwargs)
    return nodes.ApplyMultiSubjectAttention.execute(**args).args


class CallChecker:
    """unet_function_wrapper: runs each call patched and unpatched (and on the augmented context) and keeps both."""

    def __init__(self, postfuse, positions, embeddings):
        self.calls = []
        self.postfuse, self.positions, self.embeddings = postfuse, positions, embeddings

    def __call__(self, apply_model, args):
        x, t, c = args["input"], args["timestep"], args["c"]
        patched = apply_model(x, t, **c)
        options = dict(c["transformer_options"])
        wrappers = {kind: {k: v for k, v in group.items() if k != lifecycle.CALLBACK_KEY}
                    for kind, group in options.get("wrappers", {}).items()}
        plain_options = {**options, "wrappers": wrappers, "patches_replace": {}}
        plain = apply_model(x, t, **{**c, "transformer_options": plain_options})
        context = c["c_crossattn"]
        rows = [i for i, kind in enumerate(args["cond_or_uncond"]) if kind == 0]
        augmented = context.clone()
        augmented[rows] = fusion_patch.augmented_context(self.postfuse, context[rows], self.positions, self.embeddings)
        official = apply_model(x, t, **{**c, "c_crossattn": augmented, "transformer_options": plain_options})
        self.calls.append({"sigma": float(t.max()), "cond_or_uncond": list(args["cond_or_uncond"]),
                           "patched": patched, "plain": plain, "official": official})
        return patched


def run(model, clip, sampler="euler", scheduler="normal", steps=STEPS, seed=0):
    positive, negative = encode_text(clip, PROMPT, 128, 128), encode_text(clip, "blurry", 128, 128)
    latent = torch.zeros(LATENT)
    noise = torch.randn(LATENT, generator=torch.Generator().manual_seed(seed))
    return comfy.sample.sample(model, noise, steps, CFG, sampler, scheduler, positive, negative, latent, seed=seed,
                               disable_pbar=True)


def checked(model, encoder, people, start_percent, **kwargs):
    patched, _routes = apply(model, encoder, people, start_percent=start_percent, **kwargs)
    positions = encoder.token_positions(people, PROMPT)
    checker = CallChecker(encoder.postfuse, positions, torch.stack([s.encoded(encoder) for s in people]))
    patched = patched.clone()
    patched.set_model_unet_function_wrapper(checker)
    return patched, checker


def test_kind_is_registered_and_recognised(encoder_path, encoder):
    assert registry.kind_of(encoder_path).kind == "fastcomposer_sd15"
    assert "fastcomposer" in registry.model_folders()
    assert encoder.base_model == "SD1.5" and encoder.embed_dim == 768


def test_people_are_encoded_one_embedding_each_views_averaged(encoder, people):
    for subject in people:
        views = subject.reference.pixels
        assert torch.allclose(subject.encoded(encoder), encoder.object_embeddings(views).mean(0), atol=1e-6)
        assert subject.encoded(encoder).shape == (768,)
    assert people[1].reference.pixels.shape[0] == 2


@pytest.mark.parametrize("sampler, scheduler", [("euler", "normal"), ("dpmpp_2m", "karras"), ("heun", "normal")])
def test_switch_then_only_the_people_tokens_change(unet, clip, encoder, people, sampler, scheduler):
    start = 0.4
    model, checker = checked(unet, encoder, people, start)
    run(model, clip, sampler, scheduler)
    switch_sigma = unet.get_model_object("model_sampling").percent_to_sigma(start)
    before = [c for c in checker.calls if c["sigma"] > switch_sigma]
    after = [c for c in checker.calls if c["sigma"] <= switch_sigma]
    assert before and after
    for call in before:
        assert torch.equal(call["patched"], call["plain"])
    for call in after:
        negative = [i for i, kind in enumerate(call["cond_or_uncond"]) if kind == 1]
        positive = [i for i, kind in enumerate(call["cond_or_uncond"]) if kind == 0]
        assert negative and positive
        assert torch.equal(call["patched"][negative], call["plain"][negative])
        assert torch.equal(call["patched"][positive], call["official"][positive])
        assert not torch.allclose(call["patched"][positive], call["plain"][positive], atol=1e-6)


def test_equals_the_official_conditioning_switch(unet, clip, encoder, people):
    """The patched MODEL samples exactly like the unpatched one fed ConditioningSetTimestepRange text-only [0, p]
    combined with the augmented conditioning [p, 1] (the official switch written as ComfyUI conditioning)."""
    import nodes as comfy_nodes

    start = 0.3
    patched, _ = apply(unet, encoder, people, start_percent=start)
    positions = encoder.token_positions(people, PROMPT)
    embeddings = torch.stack([s.encoded(encoder) for s in people])
    positive = encode_text(clip, PROMPT, 128, 128)
    augmented = [[fusion_patch.augmented_context(encoder.postfuse, positive[0][0], positions, embeddings), dict(positive[0][1])]]
    text_only = comfy_nodes.ConditioningSetTimestepRange().set_range(positive, 0.0, start)[0]
    fused = comfy_nodes.ConditioningSetTimestepRange().set_range(augmented, start, 1.0)[0]
    official = comfy_nodes.ConditioningCombine().combine(text_only, fused)[0]
    negative = encode_text(clip, "blurry", 128, 128)
    noise = torch.randn(LATENT, generator=torch.Generator().manual_seed(3))
    ours = comfy.sample.sample(patched, noise, STEPS, CFG, "euler", "normal", positive, negative, torch.zeros(LATENT),
                               seed=3, disable_pbar=True)
    reference = comfy.sample.sample(unet, noise, STEPS, CFG, "euler", "normal", official, negative, torch.zeros(LATENT),
                                    seed=3, disable_pbar=True)
    assert torch.allclose(ours, reference, atol=1e-5)
    plain = comfy.sample.sample(unet, noise, STEPS, CFG, "euler", "normal", positive, negative, torch.zeros(LATENT),
                                seed=3, disable_pbar=True)
    assert not torch.allclose(ours, plain, atol=1e-4)


def test_default_delay_is_the_official_demo(unet, encoder, people):
    patched, _ = apply(unet, encoder, people, start_percent=0.0)
    wrapper = patched.get_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, lifecycle.CALLBACK_KEY)[0]
    sampling = unet.get_model_object("model_sampling")
    assert wrapper.people.sigma_range[0] == pytest.approx(sampling.percent_to_sigma(delay.DEMO_START_PERCENT))
    assert delay.official_switch(delay.alpha_switch(0.75, 50), 50).last_text_only_timestep == 761


def test_incoming_model_is_not_mutated(unet, encoder, people):
    before = repr(unet.model_options)
    patched, _ = apply(unet, encoder, people, layout(((0, 0, 0.5, 1), (0.5, 0, 1, 1)), list(PHRASES), 128, 128))
    assert repr(unet.model_options) == before
    assert patched is not unet and patched.model_options["transformer_options"].get("patches_replace", {}).get("attn2")


def boxed_layer_call(unet, encoder, people, boxes):
    """One real cross-attention block of the patched model, called as ComfyUI calls it, and the plain attention."""
    patched, _ = apply(unet, encoder, people, layout(boxes, list(PHRASES), 128, 128), start_percent=0.0)
    attn2_patches = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    key = ("input", 1, 0)
    patch = attn2_patches[key]
    attn2 = patch.attn2
    height, width = 8, 8
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, height * width, attn2.to_q.in_features, generator=generator)
    context = torch.randn(2, 77, 768, generator=generator)
    q, k, v = attn2.to_q(hidden), attn2.to_k(context), attn2.to_v(context)
    wrapper_people = patch.people[0]
    fused = wrapper_people.fused(context[:1])
    options = {"n_heads": attn2.heads, "activations_shape": [2, q.shape[-1], height, width],
               "original_shape": [2, 4, height, width], "cond_or_uncond": [0, 1],
               fusion_patch.FUSED_KEY: {id(wrapper_people): (torch.tensor([0]), fused)}}
    with torch.no_grad():
        out = patch(q, k, v, options)
        plain = comfy_attention.optimized_attention(q, k, v, attn2.heads)
    return out, plain, q, k, v, attn2, fused, wrapper_people, options


def test_with_boxes_each_token_acts_only_inside_its_box(unet, encoder, people):
    boxes = ((0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0))
    out, plain, q, k, v, attn2, fused, wrapper_people, options = boxed_layer_call(unet, encoder, people, boxes)
    grid = torch.arange(64).reshape(8, 8)
    left, right = grid[:, :4].flatten(), grid[:, 4:].flatten()
    assert torch.equal(out[1], plain[1])  # the negative row
    for person, inside in ((0, left), (1, right)):
        k_s, v_s = k[:1].clone(), v[:1].clone()
        position = wrapper_people.positions[person]
        with torch.no_grad():
            k_s[:, position], v_s[:, position] = attn2.to_k(fused[:, person]), attn2.to_v(fused[:, person])
            alone = comfy_attention.optimized_attention(q[:1], k_s, v_s, attn2.heads)
        assert torch.allclose(out[0, inside], alone[0, inside], atol=1e-5)
        assert not torch.allclose(out[0, inside], plain[0, inside], atol=1e-5)


def test_with_a_box_outside_is_untouched(unet, encoder, people):
    boxes = ((0.0, 0.0, 0.25, 0.5), (0.75, 0.5, 1.0, 1.0))
    out, plain, *_ = boxed_layer_call(unet, encoder, people, boxes)
    covered = torch.zeros(8, 8, dtype=torch.bool)
    covered[:4, :2] = True
    covered[4:, 6:] = True
    outside = ~covered.flatten()
    assert torch.equal(out[0, outside], plain[0, outside])
    assert not torch.allclose(out[0, covered.flatten()], plain[0, covered.flatten()], atol=1e-5)


def test_with_boxes_through_the_sampler_negative_rows_untouched(unet, clip, encoder, people):
    boxes = layout(((0, 0, 0.5, 1), (0.5, 0, 1, 1)), list(PHRASES), 128, 128)
    model, checker = checked(unet, encoder, people, 0.5, layout_=boxes)
    result = run(model, clip)
    assert torch.isfinite(result).all()
    switch_sigma = unet.get_model_object("model_sampling").percent_to_sigma(0.5)
    for call in checker.calls:
        negative = [i for i, kind in enumerate(call["cond_or_uncond"]) if kind == 1]
        positive = [i for i, kind in enumerate(call["cond_or_uncond"]) if kind == 0]
        assert torch.equal(call["patched"][negative], call["plain"][negative])
        if call["sigma"] > switch_sigma:
            assert torch.equal(call["patched"], call["plain"])
        else:
            assert not torch.allclose(call["patched"][positive], call["plain"][positive], atol=1e-6)


def test_box_covers_are_cached_during_a_run_and_dropped_after(unet, clip, encoder, people):
    patched, _ = apply(unet, encoder, people, layout(((0, 0, 0.5, 1), (0.5, 0, 1, 1)), list(PHRASES), 128, 128),
                       start_percent=0.5)
    fused = next(iter(patched.model_options["transformer_options"]["patches_replace"]["attn2"].values())).people[0]
    sizes = []
    original = fused.box_covers

    def spy(*args):
        out = original(*args)
        sizes.append(len(fused._routes))
        return out

    fused.box_covers = spy
    try:
        run(patched, clip, steps=3)
    finally:
        del fused.box_covers
    assert sizes and max(sizes) > 0, "the box covers were cached while sampling"
    assert not fused._routes and not fused._modules


def test_an_ipadapter_family_pack_applied_after_it_adds_through_add(unet, clip, encoder, people):
    """IPAdapter+, InstantID, PuLID call .add on the patch they find: with boxes that is FastComposer's patch."""
    from test_add_protocol import EVERY_SIGMA, Callback, install

    boxes = layout(((0, 0, 0.5, 1), (0.5, 0, 1, 1)), list(PHRASES), 128, 128)
    patched, _ = apply(unet, encoder, people, boxes, start_percent=0.5)
    keys = list(unet_blocks.cross_attention_blocks(patched))
    callback = Callback(0.05)
    chained = install(patched, callback, keys=keys, weight=0.05, **EVERY_SIGMA)
    attn2 = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert all(not attn2[key].callbacks for key in keys)  # the .add on the clone did not reach the patched MODEL
    result = run(chained, clip, steps=2)
    assert torch.isfinite(result).all()
    assert {seen["module_key"] for seen in callback.seen} == set(keys)
    assert not torch.equal(result, run(patched, clip, steps=2))


def test_chains_with_another_packs_attn2_patch(unet, clip, encoder, people):
    seen = []

    def foreign(q, k, v, extra_options):
        seen.append(q.shape[0])
        return comfy_attention.optimized_attention(q, k, v, extra_options["n_heads"])

    model = unet.clone()
    for key in unet_blocks.cross_attention_blocks(model):
        model.set_model_attn2_replace(foreign, *key)
    patched, _ = apply(model, encoder, people, layout(((0, 0, 0.5, 1), (0.5, 0, 1, 1)), list(PHRASES), 128, 128),
                       start_percent=0.5)
    for patch in patched.model_options["transformer_options"]["patches_replace"]["attn2"].values():
        assert patch.base is foreign
    run(patched, clip, steps=3)
    calls_without = len(seen)
    assert calls_without > 0
    seen.clear()
    run(model, clip, steps=3)
    assert calls_without > len(seen)  # after the switch the foreign patch also computes each person's swapped attention


def test_batch_and_cfg_one(unet, clip, encoder, people):
    patched, _ = apply(unet, encoder, people, start_percent=0.2)
    positive, negative = encode_text(clip, PROMPT, 128, 128), encode_text(clip, "blurry", 128, 128)
    noise = torch.randn((2, *LATENT[1:]), generator=torch.Generator().manual_seed(1))
    for cfg in (1.0, CFG):
        out = comfy.sample.sample(patched, noise, 3, cfg, "euler", "normal", positive, negative, torch.zeros(2, *LATENT[1:]),
                                  seed=1, disable_pbar=True)
        plain = comfy.sample.sample(unet, noise, 3, cfg, "euler", "normal", positive, negative, torch.zeros(2, *LATENT[1:]),
                                    seed=1, disable_pbar=True)
        assert out.shape == plain.shape and not torch.allclose(out, plain)


def test_errors_name_the_problem(unet, encoder, people):
    with pytest.raises(base.SubjectSetupError, match="FastComposer for SD1.5.*Load Diffusion Model"):
        apply(tiny_sdxl_model(), encoder, people)
    with pytest.raises(base.SubjectSetupError, match="2 people but 1 box"):
        apply(unet, encoder, people, layout(((0, 0, 1, 1),), ["man"], 128, 128))
    with pytest.raises(base.SubjectSetupError, match="'woman' is not in the prompt"):
        apply(unet, encoder, people, prompt="a man at the beach")
    with pytest.raises(base.SubjectSetupError, match="needs the positive prompt"):
        apply(unet, encoder, people, prompt="")
    with pytest.raises(base.SubjectSetupError, match="start_percent"):
        apply(unet, encoder, people, start_percent=0.8, end_percent=0.5)


def test_without_clip_the_error_names_encode_references_clip_input(unet, encoder):
    """FastComposer finds the people's words with the CLIP's tokenizer: a missing clip is named where it is encoded."""
    fix = r"FastComposer finds each person's word .* Encode Reference's 'clip' input is not connected: connect the SD1.5 checkpoint's CLIP"
    with pytest.raises(base.SubjectSetupError, match="^Encode Reference: " + fix):
        nodes.EncodeReference.execute(image=reference_image(20), phrase="man", subject_encoder=encoder)
    subjects = nodes.EncodeReference.execute(image=reference_image(20), phrase="man").args[0]
    with pytest.raises(base.SubjectSetupError, match=r"^Apply Multi-Subject Attention: subject 1 \('man'\): " + fix):
        apply(unet, encoder, subjects, prompt="a man")


def test_stock_unet_is_warned_about(unet, encoder_path, tmp_path, people, caplog):
    with caplog.at_level(logging.WARNING, logger="comfyui_multisubject.fastcomposer"):
        apply(unet, registry.load_subject_encoder(encoder_path), people)
    assert "not FastComposer's fine-tuned UNet" not in caplog.text
    other = registry.load_subject_encoder(save_fastcomposer(tmp_path / "other.safetensors", unet=tiny_sd15_model(seed=9)))
    with caplog.at_level(logging.WARNING, logger="comfyui_multisubject.fastcomposer"):
        apply(unet, other, people)
    assert "not FastComposer's fine-tuned UNet" in caplog.text and "Load Diffusion Model" in caplog.text


def sample_with(model, positive, negative, latent, denoise=1.0, seed=4, steps=4):
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    return comfy.sample.sample(model, noise, steps, CFG, "euler", "normal", positive, negative, latent, denoise=denoise,
                               seed=seed, disable_pbar=True)


def test_hires_pass_controlnet_and_weight_patches_take_part(unet, clip, encoder, people):
    """A hires second pass on the patched MODEL, a ControlNet on the prompt and a LoRA-style weight patch on the
    patched MODEL all change the result beside the people (and the people still change it under them)."""
    import nodes as comfy_nodes
    from devkit.tiny_sd15_fastcomposer import tiny_sd15_controlnet

    patched, _ = apply(unet, encoder, people, layout(((0, 0, 0.5, 1), (0.5, 0, 1, 1)), list(PHRASES), 128, 128),
                       start_percent=0.3)
    positive, negative = encode_text(clip, PROMPT, 128, 128), encode_text(clip, "blurry", 128, 128)
    first = sample_with(patched, positive, negative, torch.zeros(LATENT))
    upscaled = torch.nn.functional.interpolate(first, scale_factor=1.5, mode="nearest")
    hires = sample_with(patched, positive, negative, upscaled, denoise=0.5)
    assert hires.shape[-1] == 24 and not torch.allclose(hires, sample_with(unet, positive, negative, upscaled, denoise=0.5))

    hint = torch.rand(1, 128, 128, 3, generator=torch.Generator().manual_seed(5))
    controlled = comfy_nodes.ControlNetApplyAdvanced().apply_controlnet(positive, negative, tiny_sd15_controlnet(), hint,
                                                                        1.0, 0.0, 1.0)
    with_control = sample_with(patched, controlled[0], controlled[1], torch.zeros(LATENT))
    assert not torch.allclose(with_control, first)
    assert not torch.allclose(with_control, sample_with(unet, controlled[0], controlled[1], torch.zeros(LATENT)))

    generator = torch.Generator().manual_seed(6)
    weights = {f"diffusion_model.{k}": v for k, v in unet.model.diffusion_model.state_dict().items() if k.endswith("attn2.to_k.weight")}
    diffs = {k: (torch.randn(v.shape, generator=generator) * 0.05,) for k, v in weights.items()}
    lora = patched.clone()
    lora.add_patches(diffs, 1.0)
    with_lora = sample_with(lora, positive, negative, torch.zeros(LATENT))
    assert not torch.allclose(with_lora, first)
    plain_lora = unet.clone()
    plain_lora.add_patches(diffs, 1.0)
    assert not torch.allclose(with_lora, sample_with(plain_lora, positive, negative, torch.zeros(LATENT)))


def test_a_mask_blacks_out_the_background(encoder, clip):
    image = reference_image(30, size=(40, 32))
    mask = torch.zeros(1, 40, 32)
    mask[:, 8:32, 6:26] = 1.0
    subjects = nodes.EncodeReference.execute(clip=clip, image=image, phrase="man", mask=mask, subject_encoder=encoder).args[0]
    blacked = image.clone()
    blacked[mask[..., None].expand_as(image) < 0.5] = 0.0
    assert torch.allclose(subjects[0].encoded(encoder), encoder.object_embeddings(blacked)[0], atol=1e-6)
    assert not torch.allclose(subjects[0].encoded(encoder), encoder.object_embeddings(image)[0], atol=1e-4)


def test_inconsistent_image_encoder_is_a_named_error(unet, tmp_path):
    from safetensors.torch import save_file
    from devkit.tiny_sd15_fastcomposer import tiny_fastcomposer_state_dict

    flat = tiny_fastcomposer_state_dict(unet=unet)
    flat["image_encoder.vision_model.encoder.layers.1.mlp.fc2.weight"] = torch.zeros(3, 3)
    path = tmp_path / "broken.safetensors"
    save_file(flat, str(path))
    with pytest.raises(pack("models.fastcomposer.loader").FastComposerFormatError, match="broken.safetensors: the image encoder"):
        registry.load_subject_encoder(path)
