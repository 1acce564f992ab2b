"""The LAMIC kind on a tiny FLUX.1 Kontext (ComfyUI's FLUX at a tiny width) through ComfyUI's sampler."""

from __future__ import annotations

import pytest
import torch

import comfy.sample

from devkit import anystory_tiny as tiny_flux
from devkit.pack import pack

base = pack("attention_patches.kinds.base")
layout_mod = pack("attention_patches.layout")
encoder_mod = pack("attention_patches.kinds.lamic.encoder")
families = pack("attention_patches.kinds.lamic.families")

SetupError = base.SubjectSetupError
PHRASES = ("a corgi", "a red ball")
DESCRIPTIONS = ("keep appearance, running", "keep appearance")
CEI = "in a sunny park"
PROMPT = "a corgi,keep appearance, running.a red ball,keep appearance." + CEI
BOXES = ((0.0, 0.25, 0.6, 1.0), (0.4, 0.5, 0.9, 0.9))
SHIFT, SCALE = 0.1159, 0.3611


@pytest.fixture(scope="module")
def kontext():
    return tiny_flux.tiny_flux_model()


@pytest.fixture(scope="module")
def lamic():
    return encoder_mod.LamicEncoder.builtin()


def subjects(count=2, vae=None, size=(32, 48)):
    images = torch.rand(count, 1, *size, 3, generator=torch.Generator().manual_seed(3))
    return tuple(base.Subject(base.Reference(PHRASES[i % 2], images[i], vae=vae, description=DESCRIPTIONS[i % 2]))
                 for i in range(count))


def layout(boxes=BOXES, width=64, height=64):
    return layout_mod.Layout(tuple(layout_mod.LayoutBox(*b) for b in boxes), width, height)


def raw_references(count=2, size=(4, 6)):
    return [torch.randn(1, tiny_flux.LATENT_CHANNELS, *size, generator=torch.Generator().manual_seed(10 + i)) for i in range(count)]


def conditioning(seed, refs=None, tokens=512):
    generator = torch.Generator().manual_seed(seed)
    extra = {"pooled_output": torch.randn(1, tiny_flux.POOLED_DIM, generator=generator), "guidance": 2.5}
    if refs is not None:
        extra["reference_latents"] = list(refs)
    return [[torch.randn(1, tokens, tiny_flux.TXT_DIM, generator=generator), extra]]


def sample(model, positive, negative=None, cfg=1.0, batch=1, size=8, steps=4, denoise=1.0, seed=0):
    latent = torch.zeros(batch, tiny_flux.LATENT_CHANNELS, size, size)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    negative = negative if negative is not None else conditioning(2, None, positive[0][0].shape[1])
    with torch.no_grad():
        return comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", positive, negative, latent, denoise=denoise,
                                   seed=seed, disable_pbar=True)


def apply(lamic, model, subs=None, lay=None, prompt=PROMPT, **settings):
    own = {k: settings.pop(k) for k in ("first_stage_ratio", "deoverlap", "enhance_factors", "official", "to_area")
           if k in settings}
    return lamic.apply(model, subs if subs is not None else subjects(), lay if lay is not None else layout(),
                       base.ApplySettings(prompt=prompt, kind_settings=own, **settings))


def the_patch(model):
    return model.wrappers["diffusion_model"][families.WRAPPER_KEY][0].__self__


def test_conditioning_references_are_bound_without_touching_the_model(kontext, lamic):
    """ReferenceLatent's references (cfg > 1, batch 2): box i gets reference i; the incoming MODEL is unchanged."""
    options_before = repr(kontext.model_options)
    refs = raw_references()
    positive, negative = conditioning(1, refs), conditioning(2, refs)
    plain = sample(kontext, positive, negative, cfg=2.0, batch=2)
    patched = apply(lamic, kontext, first_stage_ratio=0.5)
    out = sample(patched, positive, negative, cfg=2.0, batch=2)
    assert repr(kontext.model_options) == options_before and not kontext.wrappers.get("diffusion_model")
    assert out.shape == plain.shape and torch.isfinite(out).all()
    assert (out - plain).abs().max() > 1e-3
    assert the_patch(patched).stages_seen == [1, 1, 2, 2]  # int(0.5 * 4) stage-1 steps; cond and uncond in one call
    assert the_patch(patched).held_caches() == 0  # freed by ComfyUI's cleanup callback when the run ended
    swapped = sample(patched, conditioning(1, refs[::-1]), conditioning(2, refs[::-1]), cfg=2.0, batch=2)
    assert (swapped - out).abs().max() > 1e-3  # the order of the references is the order of the boxes


def test_encode_reference_vae_path_equals_the_conditioning_path(kontext, lamic):
    """Encode Reference with the VAE gives exactly what ReferenceLatent with the same VAE latents gives."""
    vae = tiny_flux.tiny_flux_vae()
    subs = subjects(vae=vae)
    encoded = [s.encoded(lamic).latent() for s in subs]
    assert encoded[0].shape[-2:] == (4, 6)  # 32x48 px: a multiple of 16 kept, one latent cell per 8 px
    by_vae = sample(apply(lamic, kontext, subs), conditioning(1))
    by_conditioning = sample(apply(lamic, kontext), conditioning(1, encoded))
    assert torch.equal(by_vae, by_conditioning)
    with pytest.raises(SetupError, match="arrive twice"):
        sample(apply(lamic, kontext, subs), conditioning(1, encoded))


@pytest.mark.golden
def test_encode_reference_resizes_as_the_official_script(golden_set, kontext, lamic):
    """VAE mode with the cases' per-reference to_area: the VAE gets the official pixels (floor, to_area, floor, Lanczos x2)."""
    import comfy.latent_formats

    golden = golden_set("lamic")
    images, pixels = golden.tensors("grouping"), golden.tensors("refs")
    vae, latent_format = tiny_flux.tiny_flux_vae(), comfy.latent_formats.Flux()
    scaled = 0
    for name, case in golden.cases["grouping"].items():
        count = case["n_refs"]
        areas = [case["inputs"][f"ref_img_{i}"].get("to_area") or 0 for i in range(1, count + 1)]
        subs = tuple(base.Subject(base.Reference(f"thing {i}", images[f"{name}.in.ref{i}.image_u8"].float()[None] / 255.0,
                                                 vae=vae)) for i in range(1, count + 1))
        prompt = "".join(s.encoded(lamic).sad for s in subs) + CEI
        boxes = layout(((0.0, 0.0, 1.0, 1.0),) * count)
        patch = the_patch(apply(lamic, kontext, subs, boxes, prompt, to_area=", ".join(str(a) for a in areas)))
        for i, (reference, size) in enumerate(zip(patch.references, case["ref_sizes"]), 1):
            official = (pixels[f"{name}.r{i}.out.pixels"].movedim(1, -1) + 1.0) / 2.0
            assert list(official.shape[1:3]) == size["final_hw"]
            expected = latent_format.process_in(vae.encode(official).float())
            assert reference.shape == expected.shape and (reference - expected).abs().max() <= 1e-4, f"{name} ref {i}"
        scaled += sum(1 for a in areas if a)
    assert scaled > 0  # the cases exercise to_area
    with pytest.raises(SetupError, match="to_area needs"):
        apply(lamic, kontext, subjects(vae=vae), to_area="1, 2, 3")


def test_enhance_factor_scales_the_normalised_reference(kontext, lamic):
    refs = raw_references()
    enhanced = sample(apply(lamic, kontext, enhance_factors="1, 1.3"), conditioning(1, refs))
    by_hand = [refs[0], SHIFT + 1.3 * (refs[1] - SHIFT)]
    assert (enhanced - sample(apply(lamic, kontext), conditioning(1, by_hand))).abs().max() <= 1e-5


def test_window_soft_strengths_and_second_pass(kontext, lamic):
    refs = raw_references()
    positive = conditioning(1, refs)
    late = apply(lamic, kontext, start_percent=0.5, first_stage_ratio=0.5)
    sample(late, positive)
    assert the_patch(late).stages_seen == [2, 2]  # only steps 3 and 4 of 4 are masked, both after the two stage-1 steps
    hard = sample(apply(lamic, kontext), positive)
    soft = sample(apply(lamic, kontext, subject_scales=(0.5, 0.5)), positive)
    free = sample(apply(lamic, kontext, subject_scales=(0.0, 0.0)), positive)
    assert (soft - hard).abs().max() > 1e-4 and (soft - free).abs().max() > 1e-4
    second = apply(lamic, kontext, first_stage_ratio=0.5)
    out = sample(second, positive, steps=4, denoise=0.5)
    assert torch.isfinite(out).all() and the_patch(second).stages_seen[0] == 1  # a second pass starts in stage 1 again


def test_any_number_of_references_sizes_and_overlaps(kontext, lamic):
    boxes = ((0.0, 0.0, 1.0, 1.0), (0.0, 0.0, 0.5, 0.5), (0.25, 0.25, 0.75, 0.75))
    three = subjects(3)
    prompt = "".join(s.encoded(lamic).sad for s in three) + CEI
    refs = [torch.randn(1, tiny_flux.LATENT_CHANNELS, *size) for size in ((2, 2), (6, 4), (4, 10))]
    out = sample(apply(lamic, kontext, three, layout(boxes), prompt, deoverlap="3: 2"), conditioning(1, refs), size=12)
    assert torch.isfinite(out).all()
    one = apply(lamic, kontext, subjects(1), layout(BOXES[:1]), PHRASES[0] + "," + DESCRIPTIONS[0] + ".")
    assert torch.isfinite(sample(one, conditioning(1, refs[:1]), size=6)).all()


def test_named_errors(kontext, lamic, tiny):
    refs = raw_references()
    with pytest.raises(SetupError, match="needs the references"):
        sample(apply(lamic, kontext), conditioning(1))
    plain_negative = sample(apply(lamic, kontext), conditioning(1, refs), conditioning(2), cfg=2.0, steps=2)
    assert torch.isfinite(plain_negative).all()  # a negative without references runs its rows unmasked
    with pytest.raises(SetupError, match="1 reference latent"):
        sample(apply(lamic, kontext), conditioning(1, refs[:1]))
    with pytest.raises(SetupError, match="3 box"):
        apply(lamic, kontext, lay=layout(BOXES + ((0, 0, 1, 1),)))
    with pytest.raises(SetupError, match="T5TokenizerOptions"):
        sample(apply(lamic, kontext), conditioning(1, refs, tokens=256))
    with pytest.raises(SetupError, match="the text needs .* tokens"):
        apply(lamic, kontext, prompt=PROMPT + " word" * 600)
    with pytest.raises(SetupError, match="must be that exact text"):
        apply(lamic, kontext, prompt="a dog in a park")
    with pytest.raises(SetupError, match="FLUX.1 Kontext"):
        apply(lamic, tiny.tiny_sd15_model())


def test_preview_measures_each_references_in_box_share(kontext, lamic):
    """With the preview connected the model's own attention is measured: LAMIC keeps reference i inside box i."""
    recorder_mod = pack("attention_patches.recorder")
    preview = pack("nodes.router_mask_preview")
    plan_mod = pack("attention_patches.route_preview")
    positive = conditioning(1, raw_references())
    shares = {}
    for name, scales in (("lamic", None), ("free", (0.0, 0.0))):
        recorder = recorder_mod.RouteRecorder()
        model = lamic.apply(kontext, subjects(), layout(), base.ApplySettings(prompt=PROMPT, subject_scales=scales), recorder)
        sample(model, positive)
        assert recorder.steps == [0, 1, 2, 3] and recorder.layers == ["double_blocks.1"]
        plan = plan_mod.RoutePlan(layout(), PHRASES, lamic.preview_downscales, 0.0, recorder)
        shares[name] = pack("attention_patches.dit.attention_share").shares_by_step_range(recorder, layout().tensor())
        notes = preview.attention_share_notes(plan)
        assert len(notes) == 2 and notes[0].startswith("in-box attention share, steps 1-2: 1 a corgi ")
    assert all(float(s.min()) >= 0.999 for _, _, s in shares["lamic"])
    assert all(float(s.max()) < 0.95 for _, _, s in shares["free"])


def test_a_lora_in_the_graph_stays_applied(kontext, lamic):
    """LAMIC clones whatever MODEL it gets: a LoRA (weight patch) applied before Apply still acts."""
    key = "diffusion_model.double_blocks.0.img_attn.qkv.weight"
    weight = kontext.model.state_dict()[key]
    with_lora = kontext.clone()
    with_lora.add_patches({key: (torch.randn(weight.shape, generator=torch.Generator().manual_seed(5)) * 0.5,)}, 1.0)
    positive = conditioning(1, raw_references())
    patched = apply(lamic, with_lora)
    assert key in patched.patches
    assert (sample(patched, positive, steps=2) - sample(apply(lamic, kontext), positive, steps=2)).abs().max() > 1e-3


def test_mask_regions_from_draw_layout_box(kontext, lamic):
    """A MASK on Draw Layout Box gives LAMIC the painted shapes, not only their bounding boxes."""
    draw = pack("nodes.draw_layout_box").DrawLayoutBox
    token_layout = pack("attention_patches.dit.token_layout")
    kontext_adapter = pack("attention_patches.kinds.lamic.kontext").KontextAdapter()
    mask = torch.zeros(2, 64, 64)
    mask[0, :, :16] = 1
    mask[0, 48:, :] = 1  # an L: its bounding box is the whole image
    mask[1, 8:24, 40:56] = 1
    drawn = draw.execute(boxes="[]", width=64, height=64, preset="custom", mask=mask).args[0]
    assert len(drawn.regions) == 2 and drawn.boxes[0].x2 == 1.0 and drawn.boxes[0].y1 == 0.0
    call = token_layout.TokenLayout(512, (4, 4), ((2, 2), (2, 2)), (8, 8))
    sads = [s.encoded(lamic).sad for s in subjects()]
    shaped = encoder_mod.LamicMasks(kontext_adapter, sads, CEI, drawn.tensor(), ((), ()), None, True, drawn.regions)(call, 2)
    boxed = encoder_mod.LamicMasks(kontext_adapter, sads, CEI, drawn.tensor(), ((), ()), None, True)(call, 2)
    target = slice(512, 528)
    reference_1 = 528  # the first token of reference 1
    allowed = shaped.dense_mask()[target, reference_1] == 0
    expected = torch.tensor([[1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool).flatten()
    assert torch.equal(allowed, expected)  # only the L's tokens see reference 1
    assert bool((boxed.dense_mask()[target, reference_1] == 0).all())  # its bounding box: every token
    patched = apply(lamic, kontext, lay=drawn)
    assert torch.isfinite(sample(patched, conditioning(1, raw_references()), steps=2)).all()


def test_apply_names_the_official_output_size(lamic):
    """The official ~1 MP rule is a warning on Apply, never a silent change of the latent."""
    subs = subjects()
    assert not [n for n in lamic.binding_notes(subs, layout(width=1024, height=1024)) if "output size" in n]
    small = [n for n in lamic.binding_notes(subs, layout(width=96, height=96)) if n.startswith("LAMIC output size")]
    assert len(small) == 1 and "at 1024x1024" in small[0]
    wide = [n for n in lamic.binding_notes(subs, layout(width=1600, height=600)) if n.startswith("LAMIC output size")]
    assert "at 1664x624" in wide[0]  # cases.json size_rules: 600x1600 -> 624x1664 (h x w)


def test_controlnet_in_the_same_graph(kontext, lamic):
    """A FLUX ControlNet (core's ControlNetApplyAdvanced) on the LAMIC model: it acts, and LAMIC still isolates the boxes."""
    import nodes as comfy_nodes

    from devkit.anystory_tiny import tiny_flux_controlnet

    control, state_dict = tiny_flux_controlnet()
    assert "controlnet_blocks.0.weight" in state_dict and "double_blocks.0.img_attn.norm.key_norm.scale" in state_dict
    recorder_mod = pack("attention_patches.recorder")
    refs = raw_references()
    positive, negative = conditioning(1, refs), conditioning(2, refs)
    hint = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(4))
    controlled = comfy_nodes.ControlNetApplyAdvanced().apply_controlnet(positive, negative, control, hint, 1.0, 0.0, 1.0)
    recorder = recorder_mod.RouteRecorder()
    model = lamic.apply(kontext, subjects(), layout(), base.ApplySettings(prompt=PROMPT), recorder)
    without = sample(model, positive, negative, cfg=2.0, steps=3)
    with_control = sample(model, *controlled, cfg=2.0, steps=3)  # the recorder keeps this (the latest) run
    assert torch.isfinite(with_control).all() and (with_control - without).abs().max() > 1e-3
    shares = pack("attention_patches.dit.attention_share").shares_by_step_range(recorder, layout().tensor())
    assert shares and all(float(s.min()) >= 0.999 for _, _, s in shares)  # each reference's attention stays in its box


def test_hires_fix_second_pass_follows_the_new_latent_size(kontext, lamic):
    """Latent upscale x2 + core's KSampler at denoise 0.5: the boxes (normalised, or LAMIC's pixel boxes scaled by the
    layout's size) cover the same part of the larger image, and each reference stays in its box."""
    import nodes as comfy_nodes

    recorder_mod = pack("attention_patches.recorder")
    share = pack("attention_patches.dit.attention_share")
    positive, negative = conditioning(1, raw_references()), conditioning(2, raw_references())
    pixel_boxes = layout(tuple(tuple(v * 64 for v in box) for box in BOXES))  # drawn for 64x64 px = the first pass
    recorder = recorder_mod.RouteRecorder()
    settings = base.ApplySettings(prompt=PROMPT, kind_settings={"first_stage_ratio": 0.5})
    model = lamic.apply(kontext, subjects(), layout(), settings, recorder)
    first = {"samples": sample(model, positive, size=8, steps=2)}
    upscaled = comfy_nodes.LatentUpscale().upscale(first, "bilinear", 128, 128, "disabled")[0]
    assert upscaled["samples"].shape[-2:] == (16, 16)

    def second_pass(patched):
        return comfy_nodes.KSampler().sample(patched, 0, 4, 1.0, "euler", "simple", positive, negative, upscaled,
                                             denoise=0.5)[0]["samples"]

    hires = second_pass(model)
    assert hires.shape[-2:] == (16, 16) and torch.isfinite(hires).all()
    assert recorder.steps == [0, 1, 2, 3] and the_patch(model).stages_seen == [1, 1, 2, 2]  # the pass's own 4 steps
    shares = share.shares_by_step_range(recorder, layout().tensor())
    assert shares and all(float(s.min()) >= 0.999 for _, _, s in shares)  # on the 8x8-token grid of the pass
    assert torch.equal(second_pass(apply(lamic, kontext, lay=pixel_boxes, first_stage_ratio=0.5)), hires)
