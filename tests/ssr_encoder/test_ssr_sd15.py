"""SSR-Encoder on a tiny SD1.5-topology UNet (ComfyUI's SD15 class, real block layout) through the real sampler."""

import pytest
import torch

import comfy.ldm.modules.attention as comfy_attention
import comfy.model_management

from devkit.helpers import AttentionSpy, encode_text, layout, plain_attention, reference_image, sample
from devkit.pack import pack
from devkit.tiny_sd15 import MODEL_CHANNELS, save_ssr_files, ssr_manifest, tiny_sd15_clip, tiny_sd15_unet, tiny_vit_l

base = pack("attention_patches.kinds.base")
ssr = pack("attention_patches.kinds.ssr_encoder.encoder")
ssr_layer_map = pack("attention_patches.kinds.ssr_encoder.layer_map")
injection = pack("attention_patches.injection")
patch_mod = pack("attention_patches.patch")
layer_map = pack("attention_patches.layer_map")
preprocess = pack("models.ssr_encoder.preprocess")

LATENT = (16, 24)  # non-square; SD1.5 levels at 16x24, 8x12, 4x6 and the middle at 2x3
BOXES = [(0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)]


@pytest.fixture(scope="module")
def unet():
    return tiny_sd15_unet()


@pytest.fixture(scope="module")
def clip():
    return tiny_sd15_clip()


@pytest.fixture(scope="module")
def vision():
    return tiny_vit_l()


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    aligner, _ = save_ssr_files(tmp_path_factory.mktemp("ssr"), ssr_manifest(), "community")
    return ssr.SSREncoder.load(aligner)


def reference(vision, clip, phrase, seed, **kwargs):
    return base.Reference(phrase=phrase, pixels=reference_image(seed, size=(64, 48)), clip_vision=vision, clip=clip, **kwargs)


@pytest.fixture(scope="module")
def subjects(vision, clip):
    return (base.Subject(reference(vision, clip, "dog", 0)), base.Subject(reference(vision, clip, "cat", 1)))


def settings(**kwargs):
    return base.ApplySettings(**{"scale": 0.65, **kwargs})


def spied_run(model, clip, **kwargs):
    spied = model.clone()
    spy = AttentionSpy(spied)
    out = sample(spied, clip, LATENT, steps=1, prompt="a dog and a cat", **kwargs)
    return spy.calls, out


def test_layer_map_keys_name_the_right_blocks_by_width_and_position(unet):
    """All 16 keys exist in the SD1.5 UNet at the width of their checkpoint layer (the wrong-block bug fails here)."""
    diffusion_model = unet.model.diffusion_model
    assert len(ssr_layer_map.SD15_LAYERS) == 16
    for index, layer in ssr_layer_map.SD15_LAYERS.items():
        attn = injection.cross_attention_module(diffusion_model, layer.key)
        assert attn is not None, f"layer {index}: no cross-attention at {layer.key}"
        assert attn.to_q.out_features == MODEL_CHANNELS * layer.width_mult
    # input 3 and 6 are downsamplers: a map putting layers there (or 1280-wide weights on input 5) is wrong
    for key in (("input", 3, 0), ("input", 6, 0)):
        assert injection.cross_attention_module(diffusion_model, key) is None
    assert ssr_layer_map.SD15_LAYERS[9].key == ("input", 7, 0) and ssr_layer_map.SD15_LAYERS[31].key == ("middle", 0, 0)


def test_all_16_keys_fire_at_their_width_and_grid(unet, clip, encoder, subjects):
    patched = encoder.apply(unet, subjects, None, settings())
    calls, _ = spied_run(patched, clip)
    seen = {call["key"]: call for call in calls}
    assert set(seen) == {layer.key for layer in ssr_layer_map.SD15_LAYERS.values()}
    order = [call["key"] for call in calls]
    assert order.index(("input", 8, 0)) < order.index(("middle", 0, 0)) < order.index(("output", 3, 0))
    for index, layer in ssr_layer_map.SD15_LAYERS.items():
        call = seen[layer.key]
        assert call["q"].shape[-1] == encoder.checkpoint.layers.layer(index).hidden_size
        assert tuple(call["options"]["activations_shape"][-2:]) == tuple(layer_map.latent_grid(n, layer.downscale) for n in LATENT)
        plain = plain_attention(call["q"], call["k"], call["v"], call["options"])
        chunk = call["q"].shape[0] // len(call["options"]["cond_or_uncond"])
        for i, _kind in enumerate(call["options"]["cond_or_uncond"]):  # both rows get SSR tokens (negative: unconditional)
            rows = slice(i * chunk, (i + 1) * chunk)
            assert not torch.allclose(call["out"][rows], plain[rows])


def ssr_attention(q, tokens, projection, heads, scale):
    k, v = projection(tokens[None])
    return scale * comfy_attention.optimized_attention(q, k.expand(q.shape[0], -1, -1), v.expand(q.shape[0], -1, -1), heads)


def test_rows_follow_the_official_rule_without_a_layout(unet, clip, encoder, subjects):
    """Positive: text + scale x one softmax over all subjects' tokens; negative: text + scale x the unconditional tokens."""
    patched = encoder.apply(unet, subjects, None, settings())
    calls, _ = spied_run(patched, clip)
    encodings = [s.encoded(encoder) for s in subjects]
    everyone = torch.cat([e.tokens for e in encodings])
    uncond = encodings[0].negative
    assert torch.allclose(encodings[1].negative, uncond)  # text queries: every subject's unconditional tokens are the same
    for call in calls:
        index = next(n for n, layer in ssr_layer_map.SD15_LAYERS.items() if layer.key == call["key"])
        projection = encoder.checkpoint.layers.layer(index)
        options = call["options"]
        plain = plain_attention(call["q"], call["k"], call["v"], options)
        chunk = call["q"].shape[0] // len(options["cond_or_uncond"])
        for i, kind in enumerate(options["cond_or_uncond"]):
            rows = slice(i * chunk, (i + 1) * chunk)
            tokens = uncond if kind == 1 else everyone
            expected = plain[rows] + ssr_attention(call["q"][rows], tokens, projection, options["n_heads"], 0.65)
            assert torch.allclose(call["out"][rows], expected, atol=1e-4)


def test_a_subject_changes_the_output_only_inside_its_box(unet, clip, vision, encoder, subjects):
    boxes = layout(BOXES, ["dog", "cat"], width=192, height=128)
    first = encoder.apply(unet, subjects, boxes, settings())
    other_dog = (base.Subject(reference(vision, clip, "dog", 7)), subjects[1])
    second = encoder.apply(unet, other_dog, boxes, settings())
    calls, _ = spied_run(first, clip)
    patches = second.model_options["transformer_options"]["patches_replace"]["attn2"]
    for call in calls:
        options = call["options"]
        changed = patches[call["key"]](call["q"], call["k"], call["v"], options) - call["out"]
        h, w = options["activations_shape"][-2:]
        inside = first_routing(first, call["key"]).box_routes(h, w, options["original_shape"][-2], torch.device("cpu")).routes[0] > 0
        chunk = call["q"].shape[0] // len(options["cond_or_uncond"])
        for i, kind in enumerate(options["cond_or_uncond"]):
            rows = changed[i * chunk:(i + 1) * chunk]
            assert torch.equal(rows[:, ~inside], torch.zeros_like(rows[:, ~inside]))
            if kind == 0:
                assert rows[:, inside].abs().max() > 0
            else:  # the unconditional tokens do not depend on the reference
                assert torch.equal(rows, torch.zeros_like(rows))


def first_routing(model, key):
    return model.model_options["transformer_options"]["patches_replace"]["attn2"][key].routings[0]


def test_negative_rows_outside_every_box_are_plain_text_attention(unet, clip, encoder, subjects):
    one_box = layout([(0.25, 0.25, 0.75, 0.75)], ["dog"], width=192, height=128)
    patched = encoder.apply(unet, subjects[:1], one_box, settings())
    calls, _ = spied_run(patched, clip)
    for call in calls:
        options = call["options"]
        h, w = options["activations_shape"][-2:]
        inside = first_routing(patched, call["key"]).box_routes(h, w, options["original_shape"][-2], torch.device("cpu")).routes[0] > 0
        plain = plain_attention(call["q"], call["k"], call["v"], options)
        assert torch.equal(call["out"][:, ~inside], plain[:, ~inside])
        assert not torch.allclose(call["out"][:, inside], plain[:, inside])


def test_cfg_1_and_batches_sample(unet, clip, encoder, subjects):
    patched = encoder.apply(unet, subjects, None, settings())
    plain = sample(unet, clip, LATENT, steps=2, cfg=1.0)
    once = sample(patched, clip, LATENT, steps=2, cfg=1.0)
    assert torch.isfinite(once).all() and not torch.allclose(once, plain)
    noise = torch.randn(1, 4, *LATENT, generator=torch.Generator().manual_seed(0))
    positive, negative = encode_text(clip, "a dog and a cat"), encode_text(clip, "blurry")
    import comfy.sample

    batch = comfy.sample.sample(patched, noise.repeat(2, 1, 1, 1), 2, 5.0, "euler", "normal", positive, negative,
                                torch.zeros(2, 4, *LATENT), seed=0, disable_pbar=True)
    single = comfy.sample.sample(patched, noise, 2, 5.0, "euler", "normal", positive, negative,
                                 torch.zeros(1, 4, *LATENT), seed=0, disable_pbar=True)
    assert torch.allclose(batch[0], batch[1], atol=1e-5) and torch.allclose(batch[:1], single, atol=1e-4)


def test_the_incoming_model_is_untouched_and_foreign_patches_are_chained(unet, clip, encoder, subjects):
    calls = []

    def foreign(q, k, v, extra_options):
        calls.append(extra_options["block"])
        return plain_attention(q, k, v, extra_options) * 2

    chained = unet.clone()
    chained.set_model_attn2_replace(foreign, "input", 1, 0)
    patched = encoder.apply(chained, subjects, None, settings())
    assert unet.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {}) == {}
    assert chained.model_options["transformer_options"]["patches_replace"]["attn2"][("input", 1, 0)] is foreign
    sample(patched, clip, LATENT, steps=1)
    assert calls


def test_sigma_window(unet, clip, encoder, subjects):
    late = encoder.apply(unet, subjects, None, settings(start_percent=0.5))
    routing = first_routing(late, ("input", 1, 0))
    sigmas = unet.get_model_object("model_sampling").sigma_max.reshape(1)
    assert routing.sigma_range is not None and not routing.is_active({"sigmas": sigmas})
    assert routing.is_active({"sigmas": torch.tensor([0.01])})


def test_subject_scales_scale_each_subjects_tokens(unet, encoder, subjects):
    per_subject = encoder.apply(unet, subjects, None, settings(scale=1.0, subject_scales=(0.5, 2.0)))
    unit = encoder.apply(unet, subjects, None, settings(scale=1.0))
    key = ("output", 11, 0)
    keys_scaled = first_routing(per_subject, key).bank.layer(key).key
    keys_unit = first_routing(unit, key).bank.layer(key).key
    assert torch.allclose(keys_scaled[0], 0.5 * keys_unit[0], atol=1e-6) and torch.allclose(keys_scaled[1], 2.0 * keys_unit[1], atol=1e-5)
    negative = first_routing(per_subject, key).bank.layer(key, negative=True).key
    assert torch.allclose(negative, first_routing(unit, key).bank.layer(key, negative=True).key)  # never scaled
    encoder.official_multi_scale = True
    try:
        official = encoder.apply(unet, subjects, None, settings(scale=1.0, subject_scales=(0.5, 2.0)))
    finally:
        encoder.official_multi_scale = False
    keys_official = first_routing(official, key).bank.layer(key).key
    assert torch.allclose(keys_official[1], 0.5 * keys_unit[1], atol=1e-6)


def test_views_are_averaged_and_the_query_picks_the_subject(vision, clip, encoder):
    two = reference(vision, clip, "dog", 3)
    views = torch.cat([two.pixels, reference_image(4, size=(64, 48))])
    both = encoder.encode(base.Reference("dog", views, clip_vision=vision, clip=clip))
    each = [encoder.encode(base.Reference("dog", views[i:i + 1], clip_vision=vision, clip=clip)).tokens for i in range(2)]
    assert torch.allclose(both.tokens, (each[0] + each[1]) / 2, atol=1e-5)
    by_query = encoder.encode(base.Reference("dog", views[:1], clip_vision=vision, clip=clip, query="a man"))
    assert not torch.allclose(by_query.tokens, each[0], atol=1e-4)
    assert torch.allclose(by_query.negative, both.negative, atol=1e-5)
    clip_skip = clip.clone()
    clip_skip.clip_layer(-2)
    skipped = encoder.encode(base.Reference("dog", views[:1], clip_vision=vision, clip=clip_skip))
    assert torch.allclose(skipped.tokens, each[0], atol=1e-6)  # the query is always read at the last layer


def test_mask_query_uses_the_mask_cropped_like_the_image(vision, clip, encoder):
    pixels = reference_image(5, size=(64, 112))  # wide: the centre crop drops the sides
    mask = torch.zeros(1, 64, 112)
    mask[:, :, :24] = 1  # the subject is in the left strip, outside the crop
    picked = encoder.encode(base.Reference("dog", pixels, mask=mask, clip_vision=vision, clip=clip, mask_weight=1.0))
    plain = encoder.encode(base.Reference("dog", pixels, clip_vision=vision, clip=clip))
    assert not torch.allclose(picked.tokens, plain.tokens, atol=1e-4)
    assert not torch.allclose(picked.negative, plain.negative, atol=1e-4)  # the unconditional branch uses the same mask
    cropped = preprocess.mask_grid(mask, 16, crop=True)
    squashed = preprocess.mask_grid(mask, 16, crop=False)
    assert cropped.max() == 0 and squashed[0, :, :3].min() > 0.9  # official squash puts it on the left patches
    window = preprocess.crop_window(64, 112)
    assert (window.top, window.bottom, window.right - window.left) == (0, 64, 64)


def test_wrong_pairings_are_named(unet, clip, vision, encoder, subjects, tiny):
    with pytest.raises(base.SubjectSetupError, match="SD1.5"):
        encoder.apply(tiny.tiny_sdxl_model(), subjects, None, settings())
    with pytest.raises(base.SubjectSetupError, match="ViT-L/14"):
        encoder.encode(base.Reference("dog", reference_image(0), clip_vision=tiny_vit_l(width=24), clip=clip))
    with pytest.raises(base.SubjectSetupError, match="577"):
        encoder.encode(base.Reference("dog", reference_image(0), clip_vision=tiny_vit_l(image_size=336), clip=clip))
    with pytest.raises(base.SubjectSetupError, match="SD1.5's"):
        encoder.encode(base.Reference("dog", reference_image(0), clip_vision=vision, clip=tiny.tiny_sdxl_clip()))
    with pytest.raises(base.SubjectSetupError, match="box"):
        encoder.apply(unet, subjects, layout(BOXES[:1], width=192, height=128), settings())
    with pytest.raises(base.SubjectSetupError, match="per-subject"):
        encoder.apply(unet, subjects, None, settings(subject_scales=(1.0,)))
    comfy.model_management.soft_empty_cache()


def test_auto_routing_and_feather_shape_the_routes_of_ssr_subjects(unet, clip, encoder, subjects):
    phrases = pack("attention_patches.phrase_tokens").locate_phrases(clip.tokenizer, "a dog and a cat", ["dog", "cat"])
    boxes = layout(BOXES, ["dog", "cat"], width=192, height=128)
    plain = sample(encoder.apply(unet, subjects, boxes, settings()), clip, LATENT, steps=3)
    auto = sample(encoder.apply(unet, subjects, boxes, settings(auto_routing=True, phrase_tokens=phrases, start_step=1)), clip, LATENT, steps=3)
    feathered = sample(encoder.apply(unet, subjects, boxes, settings(feather=4.0)), clip, LATENT, steps=3)
    assert torch.isfinite(auto).all() and torch.isfinite(feathered).all()
    assert not torch.allclose(auto, plain) and not torch.allclose(feathered, plain)
