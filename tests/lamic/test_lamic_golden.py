"""LAMIC on FLUX.1 Kontext against the official outputs (goldens), through the pack's masked attention and wrapper."""

from __future__ import annotations

import pytest
import torch

import comfy.ldm.modules.attention as comfy_attention

from lamic.lamic_golden_support import golden_classes, golden_flux, reference_latents, target_hw, unpack
from devkit.pack import pack

masked = pack("attention_patches.dit.masked_attention")
lamic_patch = pack("attention_patches.kinds.lamic.patch")
kontext = pack("attention_patches.kinds.lamic.kontext")

pytestmark = pytest.mark.golden
TOLERANCE = 1e-4
BACKENDS = ("attention_pytorch", "attention_sub_quad", "attention_split", "attention_basic")


@pytest.fixture(scope="module")
def golden(golden_set):
    return golden_set("lamic")


@pytest.fixture(scope="module")
def flux(golden):
    return golden_flux(golden)


class Backend:
    """An override installed before the pack's: records its calls and runs one ComfyUI backend."""

    def __init__(self, name: str):
        self.function = getattr(comfy_attention, name).__wrapped__
        self.calls = 0

    def __call__(self, func, *args, **kwargs):
        self.calls += 1
        return self.function(*args, **kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_blocks(golden, flux, backend):
    """double_blocks.0 and single_blocks.0 in both stages and unmasked, on every backend, chained to a foreign override."""
    g = golden.tensors("blocks")
    model = flux.model.diffusion_model
    pe = model.pe_embedder(g["in.ids"][None])
    classes = golden_classes(golden, golden.cases["blocks"]["case"])
    for tag, stage in (("stage1", 1), ("stage2", 2), ("nomask", None)):
        foreign = Backend(backend)
        options = {"optimized_attention_override": masked.MaskedAttention(foreign)}
        if stage is not None:
            options[masked.CLASSES_KEY] = classes[stage]
        with torch.no_grad():
            # ComfyUI's blocks update their inputs in place: each gets its own copy
            img, txt = model.double_blocks[0](img=g["in.img"].clone(), txt=g["in.txt"].clone(), vec=g["in.temb"], pe=pe,
                                              transformer_options=options)
            hidden = model.single_blocks[0](torch.cat((g["in.txt"], g["in.img"]), 1), vec=g["in.temb"], pe=pe, transformer_options=options)
        assert (img - g[f"double.{tag}.out.img"]).abs().max() <= TOLERANCE
        assert (txt - g[f"double.{tag}.out.txt"]).abs().max() <= TOLERANCE
        assert (hidden - g[f"single.{tag}.out.hidden"]).abs().max() <= TOLERANCE
        assert foreign.calls >= (2 if stage is None else 2 * len(classes[stage].plan("cpu")))


def kontext_patch(golden, case, classes, references=None, probe=None):
    enhance = golden.cases["grouping"][case]["enhance_factors"]
    first = golden.cases["generate"]["first_stage_ratio"]
    return lamic_patch.LamicPatch(kontext.KontextAdapter(), len(enhance), lambda layout, stage: classes[stage], first,
                                  enhance, references, probe=probe)


def call_options(model) -> dict:
    """The transformer options a sampler gives the diffusion model of ``model`` (wrappers merged as ComfyUI does)."""
    options = dict(model.model_options["transformer_options"])
    options["wrappers"] = model.wrappers
    return options


def test_transformer(golden, flux):
    """One forward of the whole model (batch 2) per stage; the stage comes from the sampler's schedule."""
    g = golden.tensors("transformer")
    case = golden.cases["transformer"]["case"]
    classes = golden_classes(golden, case)
    patched = flux.clone()
    patch = kontext_patch(golden, case, classes)
    patch.install(patched)
    assert "optimized_attention_override" not in flux.model_options.get("transformer_options", {})
    refs = [r.repeat(2, 1, 1, 1) for r in reference_latents(golden, case, "ref_tokens_no_enhance")]
    x = unpack(g["in.latents"], target_hw(golden))
    batch = x.shape[0]
    context, pooled = g["in.prompt_embeds"].repeat(batch, 1, 1), g["in.pooled"].repeat(batch, 1)
    for tag, stage_steps in (("stage1", (0, 6)), ("stage2", (5, 6))):
        step, steps = stage_steps
        options = call_options(patched)
        sigma = float(g["in.sigma"][0])
        schedule = torch.linspace(1, 0, steps + 1)
        schedule[step] = sigma
        options.update(sample_sigmas=schedule, sigmas=torch.tensor([sigma]))
        with torch.no_grad():
            out = patched.model.diffusion_model(x, g["in.sigma"], context, y=pooled, guidance=g["in.guidance"],
                                                ref_latents=refs, transformer_options=options)
        expected = unpack(g[f"out.{tag}"][:, :x.shape[-2] * x.shape[-1] // 4], target_hw(golden))
        assert (out - expected).abs().max() <= TOLERANCE, tag
    assert patch.stages_seen == [1, 2]


SHIFT, SCALE = 0.1159, 0.3611  # FLUX's latent format: the conditioning holds raw VAE latents


def raw(latent: torch.Tensor) -> torch.Tensor:
    return latent / SCALE + SHIFT


def conditioning(context, pooled, guidance, refs):
    return [[context, {"pooled_output": pooled, "guidance": guidance, "reference_latents": [raw(r) for r in refs]}]]


def run_sampler(model, start, sigmas, positive, negative, cfg):
    """ComfyUI's own sampler (euler, custom sigmas) from the given start latents; (final latents, per-step velocities)."""
    import comfy.sample
    import comfy.samplers

    velocities = []

    def callback(step, denoised, x, total):
        velocities.append((x - denoised) / sigmas[step])

    sampler = comfy.samplers.sampler_object("euler")
    latent_image = torch.zeros_like(start)
    with torch.no_grad():
        out = comfy.sample.sample_custom(model, start, cfg, sampler, sigmas, positive, negative, latent_image,
                                         callback=lambda *a: callback(*a), disable_pbar=True, seed=0)
    return (out - SHIFT) * SCALE, velocities


def kind_patched(golden, flux, case: str, first_stage_ratio: float):
    """``flux`` patched by the LAMIC kind's Apply path for the official input dict of ``case``."""
    base = pack("attention_patches.kinds.base")
    layout_mod = pack("attention_patches.layout")
    lamic = pack("attention_patches.kinds.lamic.encoder").LamicEncoder.builtin()
    inputs = golden.cases["grouping"][case]["inputs"]
    height, width = golden.cases["grouping"][case]["output_hw"]
    refs = [inputs[f"ref_img_{i}"] for i in range(1, golden.cases["grouping"][case]["n_refs"] + 1)]
    subjects = tuple(base.Subject(base.Reference(r["SAD"]["id"], torch.zeros(1, 16, 16, 3), description=r["SAD"]["desc"]))
                     for r in refs)

    def normalised(box):
        return box if all(v <= 1 for v in box) else [box[0] / width, box[1] / height, box[2] / width, box[3] / height]

    layout = layout_mod.Layout(tuple(layout_mod.LayoutBox(*normalised(r["bbox"])) for r in refs), width, height)
    deoverlap = "; ".join(f"{i}: {', '.join(map(str, r['de-overlap']))}" for i, r in enumerate(refs, 1) if r.get("de-overlap"))
    own = {"first_stage_ratio": first_stage_ratio, "deoverlap": deoverlap,
           "enhance_factors": ", ".join(str(f) for f in golden.cases["grouping"][case]["enhance_factors"])}
    settings = base.ApplySettings(prompt=golden.cases["grouping"][case]["total_prompts"], kind_settings=own)
    patched = lamic.apply(flux, subjects, layout, settings)
    patch = patched.wrappers["diffusion_model"][lamic_patch_key()][0].__self__
    return patched, patch


def lamic_patch_key():
    return pack("attention_patches.kinds.lamic.families").WRAPPER_KEY


def test_generate_loop(golden, flux):
    """The official 6-step loop with two stage-1 steps: the kind's Apply path, ComfyUI's sampler on the golden sigmas."""
    g = golden.tensors("generate")
    case = golden.cases["generate"]["case"]
    patched, patch = kind_patched(golden, flux, case, golden.cases["generate"]["first_stage_ratio"])
    hw = target_hw(golden)
    refs = reference_latents(golden, case, "ref_tokens_no_enhance")
    guidance = golden.cases["generate"]["guidance"]
    positive = conditioning(g["in.prompt_embeds"], g["in.pooled"], guidance, refs)
    negative = conditioning(torch.zeros_like(g["in.prompt_embeds"]), g["in.pooled"], guidance, refs)
    final, velocities = run_sampler(patched, unpack(g["in.latents"], hw), g["out.sigmas"], positive, negative, 1.0)
    expected_stages = [int(s["stage"][-1]) for s in golden.cases["generate"]["per_step"]]
    assert patch.stages_seen == expected_stages
    assert len(velocities) == len(expected_stages)
    for step, velocity in enumerate(velocities):
        assert (velocity - unpack(g[f"out.step{step}.velocity"], hw)).abs().max() <= TOLERANCE, step
    assert (final - unpack(g["out.latents"], hw)).abs().max() <= TOLERANCE


def test_true_cfg_loop(golden, flux):
    """LAMIC's true CFG (the negative pass under the positive prompt's mask) as ComfyUI CFG with batched rows."""
    g = golden.tensors("generate")
    cfg = golden.cases["generate"]["true_cfg"]
    case = cfg["case"]
    patched, patch = kind_patched(golden, flux, case, cfg["first_stage_ratio"])
    hw = target_hw(golden)
    refs = reference_latents(golden, case, "ref_tokens_no_enhance")
    guidance = golden.cases["generate"]["guidance"]
    positive = conditioning(g["cfg.in.prompt_embeds"], g["cfg.in.pooled"], guidance, refs)
    negative = conditioning(g["cfg.in.neg_prompt_embeds"], g["cfg.in.neg_pooled"], guidance, refs)
    final, _ = run_sampler(patched, unpack(g["cfg.in.latents"], hw), g["cfg.out.sigmas"], positive, negative, cfg["true_cfg_scale"])
    assert patch.stages_seen == [int(s["stage"][-1]) for s in cfg["per_step"]]  # one batched call per step
    assert (final - unpack(g["cfg.out.latents"], hw)).abs().max() <= TOLERANCE
