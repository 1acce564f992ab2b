"""Auto routing (pseudo layout) in the real sampler loop, route capture, and Router Mask Preview."""

import logging

import pytest
import torch

import comfy.model_management
from comfy_api.latest import io

from devkit.helpers import AttentionSpy, encode_subjects, layout, plain_attention, sample
from devkit.pack import pack

nodes = pack("nodes")
patch_mod = pack("attention_patches.patch")
auto_routing = pack("attention_patches.auto_routing")
route_preview = pack("attention_patches.route_preview")
phrase_tokens = pack("attention_patches.phrase_tokens")
routing = pack("attention_patches.routing")

LATENT = (16, 24)
PROMPT = "a photo of a dog and a cat on a lawn"
BOXES = [(0.0, 0.25, 0.4, 0.75), (0.6, 0.25, 1.0, 0.75)]
APPLY_ID = "7"
PREVIEWING_PROMPT = {"9": {"class_type": "MSP_RouterMaskPreview", "inputs": {"routes": [APPLY_ID, 1]}}}


@pytest.fixture(scope="module")
def subjects(tiny_vision, tiny_clip):
    return encode_subjects(tiny_vision, tiny_clip, ["dog", "cat"])


def apply_node(graph=None):
    """The Apply node as ComfyUI's executor runs it: a class clone carrying the hidden prompt and id."""
    hidden = {io.Hidden.prompt: graph if graph is not None else PREVIEWING_PROMPT, io.Hidden.unique_id: APPLY_ID}
    return nodes.ApplyMultiSubjectAttention.PREPARE_CLASS_CLONE(hidden)


def apply(model, encoder, subjects, graph=None, **kwargs):
    """Apply Multi-Subject Attention run inside ``graph`` (default: a graph that previews its routes)."""
    args = dict(model=model, subject_encoder=encoder, subjects=subjects, layout=layout(BOXES, ["dog", "cat"]), scale=0.6,
                start_percent=0.0, end_percent=1.0, drop_grounding=False)
    args.update(kwargs)
    return apply_node(graph).execute(**args).args


def auto(model, encoder, subjects, start_step=2, **kwargs):
    return apply(model, encoder, subjects, auto_routing=True, prompt=PROMPT, start_step=start_step, **kwargs)


def test_phrases_are_found_in_long_repeated_and_weighted_prompts(tiny_clip):
    tokenizer = tiny_clip.tokenizer
    positions = phrase_tokens.locate_phrases(tokenizer, "a dog and a dog, (cat:1.2) here", ["dog", "dog", "cat"])
    ids = {p: t for p, t, _ in phrase_tokens.prompt_tokens(tokenizer, "a dog and a dog, (cat:1.2) here")}
    decode = tokenizer.clip_l.tokenizer.decode
    assert positions[0] != positions[1]
    assert [decode([ids[p] for p in pos]) for pos in positions] == ["dog", "dog", "cat"]
    long_prompt = " ".join(["word"] * 90) + ", a red hat"
    (hat,) = phrase_tokens.locate_phrases(tokenizer, long_prompt, ["red hat"])
    assert len(hat) == 2 and hat[0] >= 77  # second 77-token chunk of the context
    chunks = tokenizer.clip_l.tokenize_with_weights(long_prompt, return_word_ids=True)
    assert decode([chunks[hat[0] // 77][hat[0] % 77][0], chunks[hat[1] // 77][hat[1] % 77][0]]) == "red hat"


def test_missing_phrase_lists_the_prompts_words(tiny_unet, tiny_encoder, subjects):
    with pytest.raises(phrase_tokens.PhraseNotFoundError, match="phrase 'cat' is not in the prompt.*'dog', 'on', 'beach'"):
        apply(tiny_unet, tiny_encoder, subjects, auto_routing=True, prompt="a dog on a beach.")
    with pytest.raises(phrase_tokens.PhraseNotFoundError, match="2 times"):
        phrase_tokens.locate_phrases(subjects[0].tokenizer, "a dog", ["dog", "dog"])
    with pytest.raises(ValueError, match="needs the positive prompt text"):
        apply(tiny_unet, tiny_encoder, subjects, auto_routing=True, prompt=" ")


def test_sampling_step_follows_the_sigma_schedule():
    schedule = torch.tensor([10.0, 6.0, 3.0, 1.0, 0.0])
    step = lambda sigma: patch_mod.sampling_step({"sample_sigmas": schedule, "sigmas": torch.tensor([sigma])})  # noqa: E731
    assert [step(s) for s in (10.0, 8.0, 6.0, 4.5, 3.0, 1.0)] == [0, 0, 1, 1, 2, 3]
    assert patch_mod.sampling_step({}) == 0


def test_heun_counts_sampling_steps_not_model_calls(tiny_unet, tiny_encoder, subjects, tiny_clip):
    model, routes = auto(tiny_unet, tiny_encoder, subjects)
    spied = model.clone()
    spy = AttentionSpy(spied)
    sample(spied, tiny_clip, LATENT, steps=4, sampler="heun", prompt=PROMPT)
    calls_per_layer = sum(1 for c in spy.calls if c["key"] == ("input", 4, 0))
    assert calls_per_layer == 7  # Heun: two model calls per step but the last
    assert routes.recorder.steps == [0, 1, 2, 3]


def test_split_positive_and_negative_calls_count_once(tiny_unet, tiny_encoder, subjects, tiny_clip, monkeypatch):
    model, routes = auto(tiny_unet, tiny_encoder, subjects)
    batched = sample(model, tiny_clip, LATENT, steps=3, prompt=PROMPT)
    real_free_memory = comfy.model_management.get_free_memory

    def no_room_to_batch_conds(device=None, torch_free_too=False):
        """The sampler asks without torch_free_too; attention kernels ask with it and keep the real answer."""
        return real_free_memory(device, torch_free_too) if torch_free_too else 0

    monkeypatch.setattr(comfy.model_management, "get_free_memory", no_room_to_batch_conds)
    spied = model.clone()
    spy = AttentionSpy(spied)
    split = sample(spied, tiny_clip, LATENT, steps=3, prompt=PROMPT)
    assert {tuple(c["options"]["cond_or_uncond"]) for c in spy.calls} == {(0,), (1,)}
    assert routes.recorder.steps == [0, 1, 2]
    assert torch.allclose(split, batched, atol=1e-4)


def test_auto_routing_fills_the_positive_rows_wherever_cond_or_uncond_puts_them(tiny_unet, tiny_encoder, subjects, tiny_clip):
    model, _ = auto(tiny_unet, tiny_encoder, subjects)
    spied = model.clone()
    spy = AttentionSpy(spied)
    sample(spied, tiny_clip, LATENT, steps=1, prompt=PROMPT)
    call = spy.calls[0]
    patch = model.model_options["transformer_options"]["patches_replace"]["attn2"][call["key"]]
    order = call["options"]["cond_or_uncond"]
    chunk = call["q"].shape[0] // len(order)
    rows = {kind: slice(i * chunk, (i + 1) * chunk) for i, kind in enumerate(order)}
    for arrangement in ([0, 1], [1, 0, 0], [0, 1, 0], [1]):  # [0, 1, 0]: positive rows not contiguous
        q, k, v = (torch.cat([call[n][rows[kind]] for kind in arrangement]) for n in "qkv")
        options = dict(call["options"], cond_or_uncond=arrangement)
        for routing_ in patch.routings:
            routing_.start_run()  # the shared text-softmax path runs inside a sampling run
        out = patch(q, k, v, options)
        for i, kind in enumerate(arrangement):
            assert torch.allclose(out[i * chunk:(i + 1) * chunk], call["out"][rows[kind]], atol=1e-5), arrangement


def test_routes_switch_to_the_models_attention_after_start_step(tiny_unet, tiny_encoder, subjects, tiny_clip):
    model, routes = auto(tiny_unet, tiny_encoder, subjects, start_step=3)
    spied = model.clone()
    spy = AttentionSpy(spied)
    sample(spied, tiny_clip, LATENT, steps=5, prompt=PROMPT)
    static = routes.static_routes(*LATENT)
    for step in routes.recorder.steps:
        recorded = routes.recorder.routes_at(step)
        assert set(recorded) == set(static)
        changed = any(not torch.equal(recorded[hw], static[hw]) for hw in static)
        assert changed == (step >= 2), step  # the layer has seen start_step (3) steps from step index 2 on
    # the image branch follows each layer's route: replay the layer's phrase-map history with the pack's functions
    phrases = model.model_options["transformer_options"]["patches_replace"]["attn2"][("input", 4, 0)].routings[0].auto.phrase_tokens
    for key in (("input", 4, 0), ("middle", 0, 5), ("output", 5, 1)):
        history = auto_routing.PhraseMapHistory()
        for call in (c for c in spy.calls if c["key"] == key):
            options = call["options"]
            rows = patch_mod.chunk_rows(options["cond_or_uncond"], call["q"].shape[0])
            step = patch_mod.sampling_step(options)
            selectors = auto_routing.phrase_selectors(phrases, call["k"].shape[1], call["k"].device)
            # the patch gets the positive rows' text attention from the same softmax as the phrase maps
            maps, text = auto_routing.phrase_attention_maps(call["q"][rows], call["k"][rows], options["n_heads"], selectors,
                                                            call["v"][rows])
            mean, seen = history.update(step, maps)
            if seen < 3:
                continue
            routed = auto_routing.pseudo_routes(mean, 0.5).amax(dim=1)[0] > 0
            assert torch.allclose(text, plain_attention(call["q"], call["k"], call["v"], options)[rows], atol=1e-5)
            added = (call["out"][rows] - text).abs().amax(dim=(0, 2))
            assert routed.any() and (~routed).any(), key
            assert added[~routed].max() == 0 and added[routed].min() > 0, key


def test_auto_routing_over_another_packs_patch(tiny_unet, tiny_encoder, subjects, tiny_clip):
    """With a foreign attn2 patch underneath, its output is the text branch and the phrase maps are computed apart."""
    calls = []

    def foreign(q, k, v, extra_options):
        calls.append(1)
        return plain_attention(q, k, v, extra_options)

    base = tiny_unet.clone()
    base.set_model_attn2_replace(foreign, "input", 4, 0)
    model, routes = auto(base, tiny_encoder, subjects)
    sample(model, tiny_clip, LATENT, steps=3, prompt=PROMPT)
    assert len(calls) == 3 and routes.recorder.steps == [0, 1, 2]
    assert routes.recorder.routes_at(2)[(8, 12)].shape == (2, 8, 12)


def test_consecutive_runs_share_no_state(tiny_unet, tiny_encoder, subjects, tiny_clip):
    model, routes = auto(tiny_unet, tiny_encoder, subjects)
    first = sample(model, tiny_clip, LATENT, steps=4, prompt=PROMPT)
    second = sample(model, tiny_clip, LATENT, steps=4, prompt=PROMPT)
    assert torch.equal(first, second)
    sample(model, tiny_clip, LATENT, steps=2, prompt=PROMPT)
    assert routes.recorder.steps == [0, 1]


def test_with_record_routes_off_nothing_is_recorded(tiny_unet, tiny_encoder, subjects, tiny_clip):
    model, routes = auto(tiny_unet, tiny_encoder, subjects, record_routes=False)
    assert routes.recorder is None
    patch = model.model_options["transformer_options"]["patches_replace"]["attn2"][("input", 4, 0)]
    assert all(r.recorder is None for r in patch.routings)
    sample(model, tiny_clip, LATENT, steps=2, prompt=PROMPT)
    assert all(r.recorder is None for r in patch.routings)


def test_preview_masks_equal_the_boxes_without_auto_routing(tiny_unet, tiny_encoder, subjects, tiny_clip, caplog):
    model, routes = apply(tiny_unet, tiny_encoder, subjects)
    latent = {"samples": sample(model, tiny_clip, LATENT, steps=2)}
    sheet, masks = nodes.RouterMaskPreview.execute(routes=routes, latent=latent).args
    height, width = LATENT[0] * 8, LATENT[1] * 8
    assert masks.shape == (2, height, width)
    for mask, (x1, y1, x2, y2) in zip(masks, BOXES):
        expected = torch.zeros(height, width)
        expected[round(y1 * height):round(y2 * height), round(x1 * width):round(x2 * width)] = 1
        assert torch.equal(mask, expected)
    assert routes.recorder is None  # box routes need no capture
    assert sheet.shape[0] == 1 and sheet.shape[2] == 2 * width and sheet.shape[3] == 3  # boxes at both UNet resolutions
    with caplog.at_level(logging.WARNING, logger="comfyui_multisubject"):
        numbered, same_masks = nodes.RouterMaskPreview.execute(routes=routes, latent=latent, steps="10, 20, final").args
    assert torch.equal(same_masks, masks)  # nothing recorded: the step numbers show no more routes...
    assert "steps 10, 20 not shown: per-step routes exist only with auto routing" in caplog.text  # ...and say so
    assert numbered.shape[1] > sheet.shape[1]  # the note, in the preview itself
    assert torch.equal(numbered[:, :sheet.shape[1], :sheet.shape[2]], sheet)  # the same panels and legend above it
    overlay = torch.full((1, height, width, 3), 0.5)
    tinted, _ = nodes.RouterMaskPreview.execute(routes=routes, latent=latent, image=overlay).args
    assert not torch.equal(tinted, sheet)


def test_preview_shows_the_dynamic_routes_at_chosen_steps(tiny_unet, tiny_encoder, subjects, tiny_clip, caplog):
    model, routes = auto(tiny_unet, tiny_encoder, subjects)
    latent = {"samples": sample(model, tiny_clip, LATENT, steps=4, prompt=PROMPT)}
    with caplog.at_level(logging.WARNING, logger="comfyui_multisubject"):
        sheet, masks = nodes.RouterMaskPreview.execute(routes=routes, latent=latent, steps="1, final").args
    assert "in-box attention share, steps 1-2: 1 dog" in caplog.text  # the routes' share inside each box, per step range
    height, width = LATENT[0] * 8, LATENT[1] * 8
    # a grid: one column per UNet resolution (the sheet is widened to fit the notes under it)...
    assert sheet.shape[2] == max(2 * width, route_preview.MIN_SHEET_WIDTH)
    assert sheet.shape[1] > 3 * height  # ...one row each for the boxes, step 1 and the final step
    finest = routes.recorder.routes_at(3)[(8, 12)]
    expected = torch.nn.functional.interpolate(finest[None], size=(128, 192), mode="nearest")[0]
    assert torch.equal(masks, expected)
    assert not torch.equal(masks, routes.image_masks(128, 192))
    with caplog.at_level(logging.WARNING, logger="comfyui_multisubject"):
        beyond, beyond_masks = nodes.RouterMaskPreview.execute(routes=routes, latent=latent, steps="2, 9, 12, final").args
    assert "steps 9, 12 not shown: the last run recorded steps 1 to 4" in caplog.text  # reported, the run does not fail
    assert torch.equal(beyond_masks, masks) and beyond.shape[1] > sheet.shape[1]
    with pytest.raises(ValueError, match="'final' or step numbers"):
        nodes.RouterMaskPreview.execute(routes=routes, latent=latent, steps="last")


def test_feather_softens_routes_beyond_the_box(tiny_unet, tiny_encoder, subjects, tiny_clip):
    model, routes = apply(tiny_unet, tiny_encoder, subjects, feather=4.0)
    patch = model.model_options["transformer_options"]["patches_replace"]["attn2"][("input", 4, 0)]
    soft = patch.routings[0].box_routes(8, 12, LATENT[0], torch.device("cpu")).routes  # input 4: half the latent
    exact = routing.box_routes(torch.tensor(BOXES), 8, 12)
    assert torch.equal(soft[exact > 0], exact[exact > 0])
    assert ((soft > 0) & (soft < 1)).any()
    spied = model.clone()
    spy = AttentionSpy(spied)
    sample(spied, tiny_clip, LATENT, steps=1)
    call = next(c for c in spy.calls if c["key"] == ("input", 4, 0))
    rows = patch_mod.chunk_rows(call["options"]["cond_or_uncond"], call["q"].shape[0])
    added = (call["out"] - plain_attention(call["q"], call["k"], call["v"], call["options"]))[rows].abs().amax(dim=(0, 2))
    ring = ((soft > 0) & (exact == 0)).any(dim=0)
    assert added[ring].min() > 0 and added[(soft == 0).all(dim=0)].max() == 0
