"""AnyStory on a tiny FLUX-topology model through ComfyUI's real sampler (comfy.sample.sample)."""

import copy

import pytest
import torch

import comfy.model_management
import comfy.sample

from devkit import anystory_tiny as tiny_flux
from devkit.pack import pack

base = pack("attention_patches.kinds.base")
encoder_mod = pack("attention_patches.kinds.anystory.encoder")
patch_mod = pack("attention_patches.kinds.anystory.patch")
gating = pack("attention_patches.kinds.anystory.gating")
recorder_mod = pack("attention_patches.recorder")
checkpoint = pack("models.anystory.checkpoint")
safe_load = pack("models.safe_load")
layout_mod = pack("attention_patches.layout")

STEPS = 10


@pytest.fixture(scope="module")
def flux_model():
    return tiny_flux.tiny_flux_model()


@pytest.fixture(scope="module")
def encoder():
    return encoder_mod.AnyStoryEncoder("tiny_anystory.bin", checkpoint.build_weights(safe_load.flatten(tiny_flux.tiny_anystory()), "t"))


def subjects_for(encoder, count, ref_grid=4):
    out = []
    for i, encoding in enumerate(tiny_flux.tiny_encodings(count, ref_grid=ref_grid)):
        out.append(encoder.with_encoding(base.Reference(f"subject {i}", torch.zeros(1, 8, 8, 3)), encoding))
    return tuple(out)


def sample(model, cfg=1.0, batch=1, height=8, width=8, seed=0):
    latent = torch.zeros(batch, tiny_flux.LATENT_CHANNELS, height, width)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    return comfy.sample.sample(model, noise, STEPS, cfg, "euler", "simple", tiny_flux.flux_conditioning(1),
                               tiny_flux.flux_conditioning(2), latent, seed=seed, disable_pbar=True)


def the_patch(model):
    return model.model_options["transformer_options"]["patches_replace"]["dit"][("double_block", 0)].method


def test_inactive_subjects_leave_flux_exactly_unchanged(flux_model, encoder):
    plain = sample(flux_model)
    patched = encoder.apply(flux_model, subjects_for(encoder, 2), None, base.ApplySettings())
    the_patch(patched).settings = patch_mod.AnyStorySettings(gating=gating.Gating(0.0, 0.0, 1.0, 1.0, True))
    assert torch.equal(sample(patched), plain)
    assert "patches_replace" not in flux_model.model_options.get("transformer_options", {})  # the input MODEL is untouched
    active = encoder.apply(flux_model, subjects_for(encoder, 2), None, base.ApplySettings())
    assert not torch.allclose(sample(active), plain)


def test_streams_follow_the_step_windows_and_the_cache_lives_one_run(flux_model, encoder):
    recorder = recorder_mod.RouteRecorder()
    settings = base.ApplySettings(start_percent=0.5, end_percent=0.8)
    patched = encoder.apply(flux_model, subjects_for(encoder, 2), None, settings, recorder)
    patch = the_patch(patched)
    sample(patched)
    redux = gating.Gating().redux_steps(STEPS)
    ref = gating.Gating(ref_start=0.5, ref_end=0.8).ref_steps(STEPS)
    expected = sorted(set(range(*redux)) | set(range(*ref)))
    assert recorder.steps == expected  # the router ran exactly in the redux and ref windows
    assert patch.ref_stream_runs == 1  # reference keys/values computed once (at the first ref step), then cached
    assert patch.ref_cache == {}  # and dropped when the run ended
    sample(patched)
    assert patch.ref_stream_runs == 2 and patch.ref_cache == {}


def test_negative_rows_run_plain_flux(flux_model, encoder):
    patched = encoder.apply(flux_model, subjects_for(encoder, 2), None, base.ApplySettings())
    flux = flux_model.get_model_object("diffusion_model")
    x = torch.randn(2, tiny_flux.LATENT_CHANNELS, 8, 8, generator=torch.Generator().manual_seed(3))
    context = torch.randn(2, 6, tiny_flux.TXT_DIM, generator=torch.Generator().manual_seed(4))
    y = torch.randn(2, tiny_flux.POOLED_DIM, generator=torch.Generator().manual_seed(5))
    sigma, guidance = torch.full((2,), 0.8), torch.full((2,), 3.5)
    schedule = torch.linspace(1, 0, STEPS + 1)
    options = dict(patched.model_options["transformer_options"])
    options.update(wrappers=patched.wrappers, sample_sigmas=schedule, sigmas=schedule[2:3].expand(2), cond_or_uncond=[0, 1])
    with torch.no_grad():
        out = flux(x, sigma, context, y=y, guidance=guidance, transformer_options=options)
        plain = flux(x, sigma, context, y=y, guidance=guidance, transformer_options={})
    assert torch.allclose(out[1], plain[1], atol=1e-5)  # the unconditional row: plain FLUX
    assert not torch.allclose(out[0], plain[0], atol=1e-3)  # the conditional row: AnyStory


def test_batches_cfg_aspect_ratios_and_three_subjects(flux_model, encoder):
    patched = encoder.apply(flux_model, subjects_for(encoder, 3), None, base.ApplySettings())
    out = sample(patched, cfg=2.0, batch=2, height=8, width=12)
    assert out.shape == (2, tiny_flux.LATENT_CHANNELS, 8, 12) and torch.isfinite(out).all()
    single = sample(patched, cfg=2.0, batch=1, height=8, width=12)
    assert torch.allclose(out[:1], single, atol=1e-4)  # rows are independent


def test_layout_constrains_the_router_to_each_box(flux_model, encoder):
    layout = layout_mod.Layout(layout_mod.parse_boxes("[[0, 0, 0.5, 1], [0.5, 0, 1, 1]]"), 64, 64)
    recorder = recorder_mod.RouteRecorder()
    patched = encoder.apply(flux_model, subjects_for(encoder, 2), layout, base.ApplySettings(), recorder)
    sample(patched)
    routes = recorder.routes_at(recorder.steps[-1])[(4, 4)]
    assert routes[0, :, 2:].abs().max() == 0 and routes[1, :, :2].abs().max() == 0


def test_lora_weights_are_owned_by_the_memory_manager_and_shared_by_clones(flux_model, encoder):
    patched = encoder.apply(flux_model, subjects_for(encoder, 2), None, base.ApplySettings())
    replacement = patched.model_options["transformer_options"]["patches_replace"]["dit"][("single_block", 1)]
    patch = replacement.method
    lora_patcher = patch.lora_patcher
    assert lora_patcher.model is patch.loras
    assert (lora_patcher.load_device, lora_patcher.offload_device) == (flux_model.load_device, flux_model.offload_device)
    assert replacement.models() == [lora_patcher] and replacement.to(torch.float16) is replacement
    assert all(not p.requires_grad for p in patch.loras.parameters())
    weights = encoder.weights  # the module wraps the checkpoint's tensors, it does not copy them
    held = {p.data_ptr() for p in patch.loras.parameters()}
    assert {weights.ref.deltas["img_in"][0].down.data_ptr(), weights.router.deltas["txt_in"][0].up.data_ptr(),
            weights.routing["single_blocks.1"].key.bias.data_ptr()} <= held
    clone, copied = patched.clone(), copy.deepcopy(replacement)
    assert the_patch(clone) is patch and copied.method.loras is patch.loras
    assert lora_patcher in clone.model_patches_models()
    ref, _, routing = patch.lora_on(torch.device("cpu"), torch.float32)  # same dtype: the parameters themselves
    assert ref.deltas["img_in"][0].down.data_ptr() == weights.ref.deltas["img_in"][0].down.data_ptr()
    assert routing["double_blocks.0"].query.down.dtype == torch.float32
    assert patch.lora_on(torch.device("cpu"), torch.bfloat16)[0].deltas["img_in"][0].down.dtype == torch.bfloat16
    sample(patched)
    assert patch._on_device == {}  # the run's casts are dropped when it ends
    assert lora_patcher in patched.model_patches_models()
    loaded = [m.model for m in comfy.model_management.current_loaded_models]
    assert any(m is lora_patcher for m in loaded)


def test_every_apply_of_an_encoder_shares_one_copy_of_its_loras(flux_model, encoder):
    """A second Apply, or the encoder with another Redux, must not make a second device or offload copy."""
    first = the_patch(encoder.apply(flux_model, subjects_for(encoder, 2), None, base.ApplySettings()))
    second = the_patch(encoder.apply(flux_model, subjects_for(encoder, 1), None, base.ApplySettings(scale=0.3)))
    restyled = encoder.with_style_model(type("StyleModel", (), {"model": RedUx()})())
    third = the_patch(restyled.apply(flux_model, subjects_for(restyled, 2), None, base.ApplySettings()))
    assert first is not second and first.lora_patcher is second.lora_patcher is third.lora_patcher
    assert first.loras is third.loras


def test_chains_a_foreign_dit_patch(flux_model, encoder):
    calls = []

    def foreign(args, extra):
        calls.append(args["transformer_options"]["block_index"])
        return extra["original_block"](args)

    model = flux_model.clone()
    model.set_model_patch_replace(foreign, "dit", "double_block", 0)
    patched = encoder.apply(model, subjects_for(encoder, 2), None, base.ApplySettings())
    sample(patched)
    assert len(calls) == STEPS
    assert not torch.allclose(sample(patched), sample(model))


def test_named_errors(flux_model, encoder, tiny):
    with pytest.raises(base.SubjectSetupError, match="FLUX.1-dev MODEL"):
        encoder.apply(tiny.tiny_sdxl_model(), subjects_for(encoder, 1), None, base.ApplySettings())
    reference = base.Reference("dog", torch.rand(1, 32, 32, 3), clip_vision=tiny.tiny_clip_vision(), vae=object())
    with pytest.raises(base.SubjectSetupError, match="SigLIP"):
        encoder.encode(reference)
    without_redux = encoder_mod.AnyStoryEncoder(
        "no_redux.bin", checkpoint.build_weights(safe_load.flatten(tiny_flux.tiny_anystory(base_redux=False)), "t"))
    with pytest.raises(base.SubjectSetupError, match="Redux"):
        without_redux.encode(reference)

    class StyleModel:
        model = torch.nn.Linear(2, 2)
    with pytest.raises(base.SubjectSetupError, match="not FLUX.1 Redux"):
        without_redux.with_style_model(StyleModel())
    assert without_redux.with_style_model(type("S", (), {"model": RedUx()})()).embedders()[0].feature_dim == tiny_flux.SIGLIP_DIM


class RedUx(torch.nn.Module):
    """A STYLE_MODEL's module with Redux's keys (as comfy.ldm.flux.redux.ReduxImageEncoder)."""

    def __init__(self):
        super().__init__()
        state = tiny_flux.tiny_redux_state()
        self.redux_up = torch.nn.Linear(*state["redux_up.weight"].shape[::-1])
        self.redux_down = torch.nn.Linear(*state["redux_down.weight"].shape[::-1])
        self.load_state_dict(state)


def test_load_node_and_router_mask_preview_show_learned_routes(flux_model, encoder, tmp_path):
    import folder_paths

    nodes = pack("nodes")
    route_preview = pack("attention_patches.route_preview")
    folder = tmp_path / "anystory"
    folder.mkdir()
    torch.save(tiny_flux.tiny_anystory(base_redux=False), folder / "anystory_flux.bin")
    folder_paths.add_model_folder_path("anystory", str(folder))
    style = type("StyleModel", (), {"model": RedUx()})()
    loaded = nodes.LoadSubjectEncoder.execute("anystory_flux.bin", style_model=style).args[0]
    assert isinstance(loaded, encoder_mod.AnyStoryEncoder) and loaded.redux_base is not None
    recorder = recorder_mod.RouteRecorder()
    subjects = subjects_for(loaded, 2)
    patched = loaded.apply(flux_model, subjects, None, base.ApplySettings(), recorder)
    samples = sample(patched)
    assert recorder.layers == [f"double_blocks.{i}" for i in range(tiny_flux.DOUBLE)] + [
        f"single_blocks.{i}" for i in range(tiny_flux.SINGLE)]
    plan = route_preview.RoutePlan(layout_mod.Layout.whole_image(2), ("a", "b"), loaded.preview_downscales, 0.0, recorder)
    out = nodes.RouterMaskPreview.execute(plan, {"samples": samples}, steps="2, final", layers="single_blocks.1").args
    sheet, masks = out
    assert masks.shape == (2, 64, 64) and sheet.shape[-1] == 3
    one_block = recorder.routes_at(recorder.steps[-1], ["single_blocks.1"])[(4, 4)]
    assert set(one_block.unique().tolist()) <= {0.0, 1.0}  # one block, one step: the hard learned route per token
    assert torch.equal(torch.nn.functional.interpolate(one_block[None], size=(64, 64), mode="nearest")[0], masks)
    with pytest.raises(ValueError, match="not recorded"):
        nodes.RouterMaskPreview.execute(plan, {"samples": samples}, layers="single_blocks.99")


def test_encode_reference_node_encodes_masked_subjects_with_siglip_and_the_vae(encoder):
    nodes = pack("nodes")
    vision, vae = tiny_flux.tiny_siglip(), tiny_flux.tiny_flux_vae()
    image = torch.rand(1, 96, 80, 3, generator=torch.Generator().manual_seed(7))
    mask = torch.zeros(1, 96, 80)
    mask[:, 16:80, 8:72] = 1
    near = torch.zeros(1, 96, 80)
    near[:, 11:85, 3:77] = 1  # the resize filters reach a few pixels across the mask's edge (as in the official code)
    other = torch.where(near[..., None] > 0, image, torch.rand(image.shape, generator=torch.Generator().manual_seed(8)))
    encoded = []
    for pixels, subject_mask in ((image, mask), (other, mask), (torch.cat((other, mask[..., None]), dim=-1), None)):
        subjects, _ = nodes.EncodeReference.execute(clip_vision=vision, image=pixels, phrase="dog", mask=subject_mask,  # no clip: not used
                                                    subject_encoder=encoder, vae=vae).args
        encoded.append(encoder.encodings[subjects[0].reference])  # encoded eagerly on Encode Reference
    first = encoded[0]
    assert first.redux.shape == (81, tiny_flux.TXT_DIM) and first.router.shape == (9, tiny_flux.TXT_DIM)
    assert first.ref_latents.shape == (1024, tiny_flux.LATENT_CHANNELS * 4) and first.ref_mask.shape == (1024,)
    assert 0 < first.ref_mask.sum() < 1024
    for other_encoding in encoded[1:]:  # the background (MASK or RGBA alpha) never reaches SigLIP or the VAE
        for name in ("redux", "router", "ref_latents", "ref_mask"):
            assert torch.allclose(getattr(first, name), getattr(other_encoding, name), atol=1e-5), name
    with pytest.raises(base.SubjectSetupError, match="Encode Reference: .*VAE"):
        nodes.EncodeReference.execute(clip_vision=vision, image=image, phrase="dog", mask=mask, subject_encoder=encoder)


@pytest.mark.parametrize("storage, compute", [(torch.bfloat16, None), (torch.float16, None), (torch.float8_e4m3fn, torch.bfloat16)],
                         ids=["bf16", "fp16", "fp8-weights"])
def test_low_precision_weights_are_used_as_loaded_and_never_changed(encoder, storage, compute):
    model = tiny_flux.tiny_flux_model(dtype=storage, compute_dtype=compute)
    flux = model.get_model_object("diffusion_model")
    before = {k: v.clone() for k, v in flux.state_dict().items()}
    plain = sample(model)
    patched = encoder.apply(model, subjects_for(encoder, 2), None, base.ApplySettings())
    out = sample(patched)
    assert torch.isfinite(out).all() and not torch.equal(out, plain)
    after = flux.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())  # LoRAs never merged


def test_auto_routing_is_refused_with_a_reason(flux_model, encoder):
    auto = base.ApplySettings(auto_routing=True, phrase_tokens=((1,), (2,)))
    with pytest.raises(base.SubjectSetupError, match="learned router"):
        encoder.apply(flux_model, subjects_for(encoder, 2), None, auto)
