"""What the SD1.5 kinds' benchmarks share: ComfyUI's SD1.5 UNet at real size and one timed CFG step per model.

ComfyUI's own SD1.5 model class with SD1.5's real unet_config (random weights, 0.86 B
parameters, in the dtype ComfyUI picks: fp16 on most GPUs, fp32 ~3.4 GB on a CPU), a CFG batch of 2 ([1, 0] cond_or_uncond: negative row first) through
``BaseModel.apply_model`` as the sampler calls it (bench_unet.Step), every model timed
interleaved with the unpatched one in the same rounds.
"""

from __future__ import annotations

import sys
import time

import torch

from bench.bench_unet import Instrument, Step
from bench.common import SCHEDULE, interleaved, ms, real_size_model

# comfy/model_detection.py (ComfyUI 0.3.75), unet_config_from_diffusers_unet: the SD15 entry (dtype set below).
SD15_UNET_CONFIG = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1,
    "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "use_temporal_attention": False,
    "use_temporal_resblock": False,
}
SD15_PARAMETERS = 859_520_964
CROSS_ATTENTIONS = 16
STEP_PERCENT = 0.5  # the timed step's place in the schedule (inside every kind's default active window)


def real_sd15_model():
    """(ModelPatcher of the real-size SD1.5 UNet with random weights in ComfyUI's dtype here, seconds it took to build)."""
    import comfy.supported_models

    start = time.perf_counter()
    patcher = real_size_model(comfy.supported_models.SD15, SD15_UNET_CONFIG, SD15_PARAMETERS)
    return patcher, time.perf_counter() - start


def parameters(patcher) -> int:
    return sum(p.numel() for p in patcher.model.diffusion_model.parameters())


def step_sigma(patcher) -> torch.Tensor:
    """[2] the sigma of the timed step (both rows), at STEP_PERCENT of the model's schedule."""
    sigma = float(patcher.get_model_object("model_sampling").percent_to_sigma(STEP_PERCENT))
    return torch.full((2,), sigma)


def timed_steps(unpatched, variants: dict, latent: int, rounds: int, context: torch.Tensor | None = None, step_class=Step):
    """Time one CFG step of ``unpatched`` and every patched model of ``variants`` interleaved.

    Returns (the ``step_class`` Step of each model, the Timings); ``context`` [2, 77, 768] (random when None).
    """
    generator = torch.Generator().manual_seed(2)
    device = unpatched.load_device
    x = torch.randn(2, 4, latent, latent, generator=generator).to(device)
    if context is None:
        context = torch.randn(2, 77, 768, generator=generator)
    context, sigma = context.to(device), step_sigma(unpatched).to(device)
    Instrument.hook_base_attention()
    steps = {"unpatched": step_class(unpatched, x, sigma, context, None, SCHEDULE)}
    steps.update({name: step_class(patched, x, sigma, context, None, SCHEDULE) for name, patched in variants.items()})
    # untimed: the first calls after building are much slower (allocator, oneDNN primitives), and a patched
    # model's first call builds its caches; so one extra unpatched step, then one warm-up call of every variant
    steps["unpatched"]()
    timings = interleaved(steps, rounds=rounds, warmup=1, progress=f"SD1.5 step {latent}x{latent}")
    return steps, timings


def per_round(timings, name: str) -> str:
    return ", ".join(f"{r[name] / r['unpatched']:.3f}" for r in timings.rounds)


# the columns of both SD1.5 kinds' tables
STEP_COLUMNS = ["model", "step ms", "patched / unpatched", "per round", "ms added by the patch (instrumented)",
                "share of the step", "Apply ms (once)"]


def unpatched_entry(timings) -> tuple[list[str], dict]:
    """The table row and the record of the unpatched reference."""
    seconds = timings.median("unpatched")
    return ["unpatched", ms(seconds), "-", "-", "-", "-", "-"], {"variant": "unpatched", "ms": seconds * 1000, "vs_unpatched": 1.0}


def log_rounds(timings) -> None:
    """Every round's step times on stderr (the tables keep the medians)."""
    for r in timings.rounds:
        print("  round seconds: " + ", ".join(f"{n} {t:.2f}" for n, t in r.items()), file=sys.stderr)
