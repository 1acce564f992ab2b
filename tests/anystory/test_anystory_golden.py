"""AnyStory parity with the official modules (goldens), through the pack's code on ComfyUI's own FLUX, fp32."""

import copy
import json

import pytest
import torch

from devkit.helpers import GOLDEN_TOLERANCE, assert_close
from devkit.pack import pack

TOLERANCE = GOLDEN_TOLERANCE
SIGLIP_TOLERANCE = 5e-3
pytestmark = pytest.mark.golden

checkpoint = pack("models.anystory.checkpoint")
ref_inputs = pack("models.anystory.reference")
streams = pack("attention_patches.kinds.anystory.streams")
patch_mod = pack("attention_patches.kinds.anystory.patch")
gating = pack("attention_patches.kinds.anystory.gating")
lifecycle = pack("attention_patches.lifecycle")
encoder_mod = pack("attention_patches.kinds.anystory.encoder")


@pytest.fixture(scope="module")
def gold(golden_set):
    return golden_set("anystory")


@pytest.fixture(scope="module")
def weights(gold):
    tensors = gold.tensors("weights")
    return tensors, checkpoint.build_weights({k.removeprefix("anystory."): v for k, v in tensors.items()
                                              if k.startswith("anystory.")}, "tiny")


@pytest.fixture(scope="module")
def flux(gold, weights):
    import comfy.ops
    from comfy.ldm.flux.model import Flux

    config = gold.cases["config"]
    heads, head_dim = config["heads"], config["head_dim"]
    model = Flux(in_channels=gold.cases["flux_config"]["in_channels"] // 4, out_channels=gold.cases["flux_config"]["in_channels"] // 4,
                 vec_in_dim=config["pooled_dim"], context_in_dim=config["txt_dim"], hidden_size=heads * head_dim, mlp_ratio=4,
                 num_heads=heads, depth=gold.cases["flux_config"]["num_layers"],
                 depth_single_blocks=gold.cases["flux_config"]["num_single_layers"], axes_dim=config["axes"], theta=10000,
                 patch_size=2, qkv_bias=True, guidance_embed=True, operations=comfy.ops.disable_weight_init)
    model.load_state_dict({k.removeprefix("bfl."): v for k, v in weights[0].items() if k.startswith("bfl.")}, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def encoder(weights):
    return encoder_mod.AnyStoryEncoder("tiny.bin", weights[1])


def test_embedders(gold, encoder):
    tensors = gold.tensors("embedders")
    redux, router = encoder.embedders()
    with torch.no_grad():
        assert_close(redux(tensors["in.siglip"], tensors["in.token_mask"]), tensors["out.redux"])
        assert_close(redux(tensors["in.siglip"]), tensors["out.redux_nomask"])
        assert_close(router(tensors["in.siglip"], tensors["in.token_mask"]), tensors["out.router"])
    assert redux.output_grid ** 2 == gold.cases["embedders"]["redux"]["tokens_per_subject"]
    assert router.output_grid ** 2 == gold.cases["embedders"]["router"]["tokens_per_subject"]


@pytest.fixture(scope="module")
def tiny_siglip(gold, weights, tmp_path_factory):
    """ComfyUI's own SigLIP vision model at the golden size (LayerNorm eps as HF's, 1e-6)."""
    import comfy.clip_vision

    config = gold.cases["config"]
    state = {k.removeprefix("siglip."): v for k, v in weights[0].items() if k.startswith("siglip.")}
    path = tmp_path_factory.mktemp("siglip") / "config.json"
    path.write_text(json.dumps({
        "num_channels": 3, "hidden_act": "gelu_pytorch_tanh", "hidden_size": config["siglip_dim"], "image_size": 384,
        "intermediate_size": state["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0], "model_type": "siglip_vision_model",
        "num_attention_heads": config["siglip_heads"], "num_hidden_layers": config["siglip_layers"], "patch_size": 14,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}))
    vision = comfy.clip_vision.ClipVisionModel(str(path))
    vision.load_sd(state)
    vision.model.float()  # fp32 parity (ComfyUI picks fp16 for text encoders on this machine)
    for module in vision.model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.eps = 1e-6
    return vision


def test_siglip_preprocessing_features_and_tokens(gold, encoder, tiny_siglip):
    tensors = gold.tensors("embedders")
    image, mask = tensors["pre.in.image_u8"].float() / 255, tensors["pre.in.mask_u8"].float() / 255
    pixels, token_mask = ref_inputs.siglip_input(image, mask, tiny_siglip.image_mean, tiny_siglip.image_std)
    assert torch.equal(token_mask, tensors["pre.out.token_mask"])
    assert_close(pixels, tensors["pre.out.pixel_values"])
    encoder_mod.check_siglip(tiny_siglip, gold.cases["config"]["siglip_dim"])
    with torch.no_grad():
        features, tokens = encoder_mod.siglip_features(tiny_siglip, image, mask)
        # ComfyUI's SigLIP itself differs from HF's by ~2.5e-3 at this size (with HF's eps too): not the pack's code
        assert_close(features, tensors["pre.out.siglip_last_hidden_state"], tolerance=SIGLIP_TOLERANCE)
        redux, router = encoder.embedders()
        assert_close(redux(tensors["pre.out.siglip_last_hidden_state"], tokens), tensors["pre.out.redux"])
        assert_close(router(tensors["pre.out.siglip_last_hidden_state"], tokens), tensors["pre.out.router"])


class StubVAE:
    """The golden's stub VAE (8x average pool + 1x1 conv) behind ComfyUI's VAE.encode interface (0..1 pixels)."""

    def __init__(self, weight):
        self.weight = weight

    def encode(self, pixels):
        x = pixels.movedim(-1, 1) * 2 - 1
        return torch.nn.functional.conv2d(torch.nn.functional.avg_pool2d(x, 8), self.weight)


def test_reference_encoding(gold):
    tensors = gold.tensors("ref_cond")
    case = gold.cases["ref_cond"]
    for s in range(gold.cases["config"]["n_subj"]):
        image, mask = tensors[f"s{s}.in.image_u8"].float() / 255, tensors[f"s{s}.in.mask_u8"].float() / 255
        tokens, ref_mask = encoder_mod.reference_latent(StubVAE(tensors["vae_stub.w"]), image, mask, case["ref_size"])
        assert_close(tokens, tensors[f"s{s}.out.tokens"])
        assert torch.equal(ref_mask, tensors[f"s{s}.out.ref_mask"])
        assert torch.equal(ref_inputs.reference_ids(case["grid"]), tensors[f"s{s}.out.ids"])


@pytest.mark.parametrize("kind", ["double", "single"])
def test_routing_maps(gold, flux, weights, kind):
    tensors = gold.tensors("routing")
    block = flux.double_blocks[0] if kind == "double" else flux.single_blocks[0]
    label = "double_blocks.0" if kind == "double" else "single_blocks.0"
    hidden, heads = block.hidden_size, block.num_heads
    router_normed = tensors[f"{kind}.in.router_normed"]
    image_len = tensors[f"{kind}.out.router_key_mean"].shape[1]
    pe = flux.pe_embedder(tensors["double.in.img_ids"][None])
    with torch.no_grad():
        if kind == "double":
            image_normed = tensors["double.in.img_normed"]
            query_base = block.txt_attn.qkv(router_normed)[..., :hidden]
            key_base = block.img_attn.qkv(image_normed)[..., hidden:2 * hidden]
            norms = block.txt_attn.norm.query_norm, block.img_attn.norm.key_norm
        else:
            image_normed = tensors["single.in.hidden_normed"][:, -image_len:]
            query_base = block.linear1(router_normed)[..., :hidden]
            key_base = block.linear1(image_normed)[..., hidden:2 * hidden]
            norms = block.norm.query_norm, block.norm.key_norm
        query, key = streams.routing_query_key(weights[1].routing[label], query_base, router_normed, key_base, image_normed,
                                               *norms, pe, heads, router_normed)
        query_mean, key_mean = streams.routing_means(query, key, gold.cases["config"]["n_subj"])
        logits, route = streams.routing_map(query_mean, key_mean)
    assert_close(query_mean, tensors[f"{kind}.out.router_query_mean"])
    assert_close(key_mean, tensors[f"{kind}.out.router_key_mean"])
    assert_close(logits, tensors[f"{kind}.out.logits"])
    decided = tensors[f"{kind}.out.margin"] > 1e-4
    assert torch.equal(route.transpose(1, 2)[decided], tensors[f"{kind}.out.map"].transpose(1, 2)[decided])


def block_streams(gold, flux, weights, tensors, case, cached=None, store=None):
    seq = gold.cases["blocks"]["seq"]
    subjects = gold.cases["config"]["n_subj"]
    shift = 0.8 if case == "shift_norouter" else 0.0
    mask = tensors["in.ref_mask"][..., 0]
    bias = shift + ((mask - 1) * 100 if case != "nomask" else 0 * mask)
    suffix = "2" if cached is not None else ""
    return streams.BlockStreams(
        subjects, seq["txt"], seq["redux"] // subjects, weights.ref, weights.router, weights.routing,
        ref=None if cached is not None else tensors["in.ref"].clone(), ref_vec=tensors["in.ref_temb"],
        ref_pe=flux.pe_embedder(tensors["in.ref_ids"][None]), ref_key_bias=bias,
        router=None if case == "shift_norouter" else tensors[f"in.router{suffix}"].clone(),
        router_per_subject=seq["router"] // subjects, cached_ref=cached, store_ref=store)


def run_block(flux, kind, tensors, s, suffix=""):
    pe = flux.pe_embedder(tensors["in.main_ids"][None])
    img, txt = tensors[f"in.img{suffix}"], tensors[f"in.txt{suffix}"]
    with torch.no_grad():
        if kind == "double":
            img, txt = streams.double_block(flux.double_blocks[0], "double_blocks.0", img, txt, tensors["in.temb"], pe, s, {})
            return {"img": img, "txt": txt}
        return {"hidden": streams.single_block(flux.single_blocks[0], "single_blocks.0", torch.cat((txt, img), 1),
                                               tensors["in.temb"], pe, s, {})}


def fresh_cases(gold):
    return [c for c in gold.cases["blocks"]["cases"] if c != "cached"]


@pytest.mark.parametrize("kind", ["double", "single"])
def test_blocks_every_case(gold, flux, weights, kind):
    tensors = gold.tensors("blocks")
    for case in fresh_cases(gold):
        s = block_streams(gold, flux, weights[1], tensors, case)
        out = run_block(flux, kind, tensors, s)
        out["ref"] = s.ref
        if s.router is not None:
            out["router"] = s.router
        expected = {k.split(".")[-1]: v for k, v in tensors.items() if k.startswith(f"{kind}.{case}.out.")}
        assert set(expected) == set(out), case
        for name, value in expected.items():
            assert_close(out[name], value)


@pytest.mark.parametrize("kind", ["double", "single"])
def test_blocks_cached_reference(gold, flux, weights, kind):
    assert "cached" in gold.cases["blocks"]["cases"]
    tensors = gold.tensors("blocks")
    store = {}
    full = block_streams(gold, flux, weights[1], tensors, "full", store=store)
    run_block(flux, kind, tensors, full)
    label = f"{kind}_blocks.0"
    assert set(store) == {label}
    cached = block_streams(gold, flux, weights[1], tensors, "cached", cached=store)
    out = run_block(flux, kind, tensors, cached, "2")
    out["router"] = cached.router
    assert cached.ref is None
    expected = {k.split(".")[-1]: v for k, v in tensors.items() if k.startswith(f"{kind}.cached.out.")}
    assert set(expected) == set(out)
    for name, value in expected.items():
        assert_close(out[name], value)


def packed(x, grid_h, grid_w):
    b, c = x.shape[:2]
    return x.view(b, c, grid_h, 2, grid_w, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, grid_h * grid_w, c * 4)


def unpacked(tokens, grid_h, grid_w):
    b, _, channels = tokens.shape
    return tokens.view(b, grid_h, grid_w, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, channels // 4, grid_h * 2, grid_w * 2)


class GoldenFlux:
    """The tiny Flux under a ModelPatcher with the pack's AnyStory patch installed; calls like the sampler does."""

    def __init__(self, flux, weights, subjects, settings):
        import comfy.model_patcher

        holder = torch.nn.Module()
        holder.diffusion_model = flux
        self.flux = flux
        self.patcher = comfy.model_patcher.ModelPatcher(holder, torch.device("cpu"), torch.device("cpu"))
        loras = comfy.model_patcher.ModelPatcher(checkpoint.AnyStoryLoRAs(weights), torch.device("cpu"), torch.device("cpu"))
        self.patch = patch_mod.AnyStoryPatch(loras, subjects, settings)
        self.patcher = lifecycle.patched_clone(self.patcher, self.patch.patch_set(self.patcher))

    def __call__(self, tokens, sigma, schedule, context, pooled, guidance, grid):
        options = copy.deepcopy(self.patcher.model_options["transformer_options"])
        options["wrappers"] = self.patcher.wrappers
        options["sample_sigmas"], options["sigmas"] = schedule, sigma
        with torch.no_grad():
            out = self.flux(unpacked(tokens, *grid), sigma, context, y=pooled, guidance=guidance, transformer_options=options)
        return packed(out, *grid)


def transformer_subjects(gold, tensors, redux_scale):
    config = gold.cases["config"]
    n = config["n_subj"]
    per_subject = tensors["in.ref_latents"].shape[1] // n
    return patch_mod.SubjectTokens(
        redux=tensors["in.redux_hidden_states"][0].view(n, -1, config["txt_dim"]) / redux_scale,
        router=tensors["in.router_hidden_states"][0].view(n, -1, config["txt_dim"]),
        ref_latents=tensors["in.ref_latents"][0].view(n, per_subject, -1),
        ref_mask=tensors["in.ref_mask"][0, :, 0].view(n, per_subject),
        ref_ids=tensors["in.ref_ids"][:per_subject])


TRANSFORMER_CASES = {  # one step whose gating runs the streams each official case ran
    "router_on": gating.Gating(0, 1, 0, 1, True),
    "router_off": gating.Gating(0, 1, 0, 1, False),
    "ref_router_noredux": gating.Gating(0, 0, 0, 1, True),
    "redux_only": gating.Gating(0, 1, 1, 1, False),
    "plain": gating.Gating(0, 0, 1, 1, True),
}


def transformer_call(gold, flux, weights, tensors, gate, cache=True):
    redux_scale = gold.cases["gating"]["defaults"]["redux_scale"]
    model = GoldenFlux(flux, weights, transformer_subjects(gold, tensors, redux_scale),
                       patch_mod.AnyStorySettings(gating=gate, redux_scale=redux_scale, ref_cache=cache))
    grid = (gold.cases["config"]["img_h"], gold.cases["config"]["img_w"])

    def step(latents, sigma):
        return model(tensors[latents], tensors[sigma], torch.stack((tensors[sigma][0], torch.zeros(()))),
                     tensors["in.prompt_embeds"], tensors["in.pooled"], tensors["in.guidance"], grid)
    return model, step


@pytest.mark.parametrize("case", list(TRANSFORMER_CASES))
def test_transformer_step(gold, flux, weights, case):
    tensors = gold.tensors("transformer")
    assert f"out.{case}" in tensors
    _, step = transformer_call(gold, flux, weights[1], tensors, TRANSFORMER_CASES[case])
    assert_close(step("in.latents", "in.sigma"), tensors[f"out.{case}"])


def test_transformer_cached_equals_uncached(gold, flux, weights):
    tensors = gold.tensors("transformer")
    model, step = transformer_call(gold, flux, weights[1], tensors, TRANSFORMER_CASES["router_on"])
    step("in.latents", "in.sigma")
    assert model.patch.ref_stream_runs == 1 and model.patch.ref_cache
    assert_close(step("in.latents2", "in.sigma2"), tensors["out.cached_step"])
    assert model.patch.ref_stream_runs == 1  # the second step used the cache
    _, uncached = transformer_call(gold, flux, weights[1], tensors, TRANSFORMER_CASES["router_on"], cache=False)
    assert_close(uncached("in.latents2", "in.sigma2"), tensors["out.uncached_step"])


def test_reference_vec_is_t_zero(gold, flux):
    tensors = gold.tensors("transformer")
    with torch.no_grad():
        vec = patch_mod.reference_vec(flux, tensors["in.pooled"], tensors["in.guidance"], tensors["in.pooled"].shape[0], "cpu", torch.float32)
    assert_close(vec, tensors["out.ref_vec"])


def test_ten_step_loop(gold, flux, weights):
    cases = gold.cases["generate"]
    defaults = gold.cases["gating"]["defaults"]
    tensors, embedders, ref_cond = gold.tensors("generate"), gold.tensors("embedders"), gold.tensors("ref_cond")
    n = gold.cases["config"]["n_subj"]
    subjects = patch_mod.SubjectTokens(
        redux=embedders["out.redux"], router=embedders["out.router"],
        ref_latents=torch.cat([ref_cond[f"s{i}.out.tokens"] for i in range(n)]),
        ref_mask=torch.cat([ref_cond[f"s{i}.out.ref_mask"][..., 0] for i in range(n)]),
        ref_ids=ref_cond["s0.out.ids"])
    gate = gating.Gating(defaults["redux_start_at"], defaults["redux_end_at"], cases["ref_start_at"], defaults["ref_end_at"],
                         cases["enable_router"])
    model = GoldenFlux(flux, weights[1], subjects, patch_mod.AnyStorySettings(gating=gate, redux_scale=defaults["redux_scale"]))
    sigmas = tensors["out.sigmas"]
    assert len(sigmas) == cases["steps"] + 1
    grid = (cases["height"] // 16, cases["width"] // 16)
    latents = tensors["in.latents"]
    guidance = torch.full((latents.shape[0],), cases["guidance"])
    for i, record in enumerate(cases["per_step"]):
        runs_before = model.patch.ref_stream_runs
        velocity = model(latents, sigmas[i:i + 1].expand(latents.shape[0]), sigmas, tensors["in.prompt_embeds"],
                         tensors["in.pooled"], guidance, grid)
        assert (model.patch.ref_stream_runs > runs_before) == record["cache_ref"], i
        latents = latents + (sigmas[i + 1] - sigmas[i]) * velocity
    assert_close(latents, tensors["out.latents"])


@pytest.mark.parametrize("table", ["per_step", "demo_multi_25_steps", "default_single_28_steps"])
def test_gating_matches_recorded_steps(gold, table):
    cases, defaults = gold.cases["generate"], gold.cases["gating"]["defaults"]
    if table == "per_step":
        records, ref_start, router = cases["per_step"], cases["ref_start_at"], cases["enable_router"]
    else:
        entry = cases[table]
        records = entry["per_step"]
        multi = table.startswith("demo")
        ref_start = defaults["demo_multi_subject"]["ref_start_at"] if multi else defaults["ref_start_at"]
        router = defaults["demo_multi_subject"]["enable_router"] if multi else defaults["enable_router"]
    gate = gating.Gating(defaults["redux_start_at"], defaults["redux_end_at"], ref_start, defaults["ref_end_at"], router)
    for record in records:
        streams_at = gate.at(record["step"], len(records))
        assert (streams_at.redux, streams_at.ref, streams_at.router) == (record["redux"], record["ref"], record["router"]), record


def test_gating_tables(gold):
    defaults = gold.cases["gating"]["defaults"]
    for name, table in gold.cases["gating"]["tables"].items():
        steps = int(name.split("_")[0])
        gate = gating.Gating(defaults["redux_start_at"], defaults["redux_end_at"], defaults["ref_start_at"], defaults["ref_end_at"])
        demo = gating.Gating(ref_start=defaults["demo_multi_subject"]["ref_start_at"])
        assert list(gate.redux_steps(steps)) == table["redux"]
        assert list(gate.ref_steps(steps)) == table["ref_default"]
        assert list(demo.ref_steps(steps)) == table["ref_demo"]
