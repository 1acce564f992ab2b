"""(b) One full UNet step of the real-size SDXL architecture: unpatched vs the pack's patch.

ComfyUI's own SDXL model class with SDXL's real unet_config (random weights, fp32, ~10 GB),
a CFG batch of 2 ([1, 0] cond_or_uncond) through ``BaseModel.apply_model``, as the sampler
calls it. The patched models come from the pack's apply path
(``SubjectEncoder.apply`` of the MS-Diffusion kind) with a real-size random MS-Diffusion encoder
(every key and shape of the official ``ms_adapter.bin``) and ``Subject`` objects
with random CLIP-ViT-bigG features [1, 257, 1664] and phrase embeddings [768].
"""

from __future__ import annotations

import gc
import statistics
import sys
import time

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from common import (  # noqa: E402
    SCHEDULE, bench_data_dir, emit, interleaved, markdown_table, ms, pack, ratio, row_boxes, section_args,
    setup_runtime, write_real_size_checkpoint,
)

# comfy/model_detection.py (ComfyUI 0.3.75), unet_config_from_diffusers_unet: the SDXL entry (dtype set below).
SDXL_UNET_CONFIG = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10], "channel_mult": [1, 2, 4],
    "transformer_depth_middle": 10, "use_linear_in_transformer": True, "context_dim": 2048, "num_head_channels": 64,
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "use_temporal_attention": False,
    "use_temporal_resblock": False,
}
PHRASES = ("dog", "cat", "hat", "teddy bear")
PROMPT_PHRASE_TOKENS = ((2,), (5,), (8,), (11, 12))  # positions of the phrases in a "a photo of a dog and ..." prompt


def real_sdxl_model():
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    from tiny_models import fill_seeded

    config = comfy.supported_models.SDXL(dict(SDXL_UNET_CONFIG, dtype=torch.float32))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    fill_seeded(model.diffusion_model, seed=0)
    model.eval().requires_grad_(False)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


def patched_models(model, encoder, counts, auto_counts):
    """{name: patched ModelPatcher} through the pack's apply path."""
    injection = pack("attention_patches.injection")
    kinds = pack("attention_patches.kinds.base")
    ms_diffusion = pack("attention_patches.kinds.ms_diffusion.encoder")
    layout_mod = pack("attention_patches.layout")
    generator = torch.Generator().manual_seed(1)

    def subjects(count):
        """Subjects whose MS-Diffusion encodings (CLIP-bigG features, phrase embedding) are already made."""
        return tuple(encoder.with_encoding(kinds.Reference(PHRASES[i], torch.zeros(1, 1, 1, 3)), ms_diffusion.EncodedSubject(
            torch.randn(1, 257, 1664, generator=generator), torch.randn(768, generator=generator))) for i in range(count))

    def layout(count):
        boxes = tuple(layout_mod.LayoutBox(*box, label=PHRASES[i]) for i, box in enumerate(row_boxes(count)))
        return layout_mod.Layout(boxes, 768, 768)

    out, apply_seconds = {}, {}
    for count in counts:
        args = (model, subjects(count), layout(count), injection.ApplySettings(scale=0.6))
        if not apply_seconds:
            encoder.apply(*args)  # untimed: the encoder's first use is a cold start
        start = time.perf_counter()
        out[f"box, {count} subject{'s' if count > 1 else ''}"] = encoder.apply(*args)
        apply_seconds[count] = time.perf_counter() - start
    for count in auto_counts:
        # start_step 1: the pseudo routes are active at every timed step (the cost of any step past start_step)
        auto = dict(auto_routing=True, phrase_tokens=PROMPT_PHRASE_TOKENS[:count], mask_threshold=0.5, start_step=1)
        out[f"auto, {count} subjects"] = encoder.apply(
            model, subjects(count), layout(count), injection.ApplySettings(scale=0.6, **auto))
    return out, apply_seconds


class Instrument:
    """Time spent in the pack's attn2 patches minus the text attention they call: what the pack adds to a step.

    Measured inside the very steps that are timed, so it is immune to the machine's load
    changing between variants. The patch objects are wrapped (not replaced) and ComfyUI's
    ``optimized_attention`` is wrapped to time the base (text) attention inside a patch.
    """

    active: Instrument | None = None  # the instrument whose patch is running

    def __init__(self):
        self.patch_seconds = 0.0
        self.base_seconds = 0.0
        self.calls = 0

    @property
    def added_seconds(self) -> float:
        return self.patch_seconds - self.base_seconds

    def reset(self) -> None:
        self.patch_seconds = self.base_seconds = 0.0
        self.calls = 0

    def wrap(self, patch):
        def timed_patch(q, k, v, extra_options):
            Instrument.active = self
            start = time.perf_counter()
            try:
                return patch(q, k, v, extra_options)
            finally:
                self.patch_seconds += time.perf_counter() - start
                self.calls += 1
                Instrument.active = None

        return timed_patch

    @staticmethod
    def hook_base_attention() -> None:
        import comfy.ldm.modules.attention as attention

        if getattr(attention.optimized_attention, "_msp_bench_timed", False):
            return
        original = attention.optimized_attention

        def timed_attention(*args, **kwargs):
            instrument = Instrument.active
            if instrument is None:
                return original(*args, **kwargs)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                instrument.base_seconds += time.perf_counter() - start

        timed_attention._msp_bench_timed = True
        attention.optimized_attention = timed_attention


class Step:
    """One apply_model call on a CFG batch of 2 with a model's transformer_options (patches instrumented).

    The model's wrappers go into the options as the sampler puts them there (a DIFFUSION_MODEL
    wrapper runs inside ``apply_model``); ``adm`` is None for a model without one (SD1.5).
    """

    def __init__(self, patcher, x, sigma, context, adm, schedule):
        import comfy.patcher_extension

        patch_mod = pack("attention_patches.patch")
        self.model = patcher.model
        self.options = dict(patcher.model_options["transformer_options"], cond_or_uncond=[1, 0], sigmas=sigma,
                            sample_sigmas=schedule)
        if patcher.wrappers:
            self.options["wrappers"] = comfy.patcher_extension.copy_nested_dicts(patcher.wrappers)
        self.options[patch_mod.RUN_STATE_KEY] = patch_mod.RunState()
        self.instrument = Instrument()
        replace = self.options.get("patches_replace", {})
        if replace.get("attn2"):
            self.options["patches_replace"] = dict(
                replace, attn2={key: self.instrument.wrap(patch) for key, patch in replace["attn2"].items()})
        self.args = (x, sigma)
        self.kwargs = {"c_crossattn": context} if adm is None else {"c_crossattn": context, "y": adm}
        self.added = []  # seconds the patches added, per timed call

    def __call__(self):
        self.instrument.reset()
        with torch.inference_mode():
            out = self.model.apply_model(*self.args, transformer_options=self.options, **self.kwargs)
        self.added.append(self.instrument.added_seconds)
        return out


def run(quick: bool = False, latent: int | None = None, rounds: int | None = None) -> tuple[str, list[dict]]:
    setup_runtime()
    subject_encoder = pack("attention_patches.kinds.registry")
    latent = latent or (64 if quick else 96)
    rounds = rounds or (2 if quick else 3)
    counts, auto_counts = (1, 2, 4), (2,)

    start = time.perf_counter()
    model = real_sdxl_model()
    build_seconds = time.perf_counter() - start
    params = sum(p.numel() for p in model.model.diffusion_model.parameters())
    _, st_path = write_real_size_checkpoint(bench_data_dir() / "real_size")
    encoder = subject_encoder.load_subject_encoder(st_path)
    variants, apply_seconds = patched_models(model, encoder, counts, auto_counts)
    del encoder
    gc.collect()

    generator = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, latent, latent, generator=generator)
    sigma = SCHEDULE[5:6].repeat(2)
    context = torch.randn(2, 77, 2048, generator=generator)
    adm = torch.randn(2, 2816, generator=generator)
    Instrument.hook_base_attention()
    steps = {"unpatched": Step(model, x, sigma, context, adm, SCHEDULE)}
    steps.update({name: Step(patched, x, sigma, context, adm, SCHEDULE) for name, patched in variants.items()})
    # untimed: the first calls after building are much slower (allocator, oneDNN primitives), and a patched
    # model's first call builds its caches; so one extra unpatched step, then one warm-up call of every variant
    steps["unpatched"]()
    timings = interleaved(steps, rounds=rounds, warmup=1, progress=f"SDXL step {latent}x{latent}")
    for name, step in steps.items():
        if name != "unpatched":
            assert step.instrument.calls == 70 and min(step.added) > 0, f"{name}: the patch did not run at every attn2"

    rows, records = [], []
    for name, step in steps.items():
        added = statistics.median(step.added[-rounds:])
        record = {"variant": name, "ms": timings.median(name) * 1000,
                  "vs_unpatched": 1.0 if name == "unpatched" else timings.ratio(name, "unpatched"),
                  "added_ms": added * 1000, "added_share": added / timings.median(name)}
        records.append(record)
        if name == "unpatched":
            rows.append([name, ms(timings.median(name)), "-", "-", "-", "-"])
            continue
        rows.append([name, ms(timings.median(name)), ratio(record["vs_unpatched"]),
                     ", ".join(f"{r[name] / r['unpatched']:.3f}" for r in timings.rounds),
                     f"{added * 1000:.0f}", f"{record['added_share'] * 100:.2f}%"])
    for r in timings.rounds:
        print("  round seconds: " + ", ".join(f"{n} {t:.2f}" for n, t in r.items()), file=sys.stderr)
    table = markdown_table(["model", "step ms", "patched / unpatched", "per round", "ms added by the patch (instrumented)",
                            "share of the step"], rows)
    text = (
        f"### (b) One SDXL UNet step, real size ({params / 1e9:.2f} B parameters, fp32), "
        f"{latent * 8}x{latent * 8} ({latent}x{latent} latent), CFG batch of 2\n\n"
        f"`apply_model` on the real SDXL architecture (random weights; built in {build_seconds:.0f} s), median of {rounds} "
        "interleaved rounds; *patched / unpatched* is the median of the per-round ratios of wall-clock step times. The "
        "instrumented columns time, inside those same steps, the pack's 70 attn2 patches minus the text attention they "
        "call, i.e. everything the pack adds to a step (routing, image branch, auto-routing maps, Python; for auto routing "
        "this includes the positive rows' text attention, which the patch computes itself with the phrase maps, so it is "
        "an upper bound); this is immune to "
        "load changes between variants, which move the wall-clock ratios by a few percent on a shared machine. Patched "
        "models come from the MS-Diffusion kind's `apply` with a real-size random MS-Diffusion encoder; box layouts: centred / side by "
        "side / 4 in a row; auto routing past `start_step`. Apply (resampler + 70 layer projections, once per Apply; "
        "after an untimed first apply) took "
        + ", ".join(f"{apply_seconds[c]:.2f} s for {c}" for c in apply_seconds) + " subject(s).\n\n" + table + "\n"
    )
    return text, records


def main(argv=None) -> int:
    args = section_args(__doc__, argv, latent={"type": int, "help": "latent side (default 96 = 768 px; quick: 64)"})
    emit(*run(args.quick, args.latent, args.rounds), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
