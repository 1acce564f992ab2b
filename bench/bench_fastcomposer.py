"""(g) FastComposer on SD1.5: one real-size SD1.5 UNet step, unpatched vs the FastComposer kind's patch.

The patched models come from the FastComposer kind's ``apply`` with a real-size fusion MLP
(width 768; the image encoder is not used at sampling time) and ``Subject`` objects whose
embeddings are random, on a prompt naming the people. Without a layout (the official augmented
conditioning: the fused vectors replace the context at the people's tokens, once per model
call) and with boxes for 1 and 2 people, each twice: as the pack computes it (each person's
swapped attention only on the pixels its box weighs) and *every pixel* (the swapped attention
of all pixels, blended with weight 0 outside the box: what the pack did before), to show the gain
and that both give the same step.
"""

from __future__ import annotations

import statistics
import sys
import time
import types

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from common import bench_data_dir, emit, markdown_table, ms, pack, ratio, row_boxes, section_args, setup_runtime  # noqa: E402
from bench_unet import Step  # noqa: E402
from sd15 import (CROSS_ATTENTIONS, STEP_COLUMNS, log_rounds, parameters, per_round, real_sd15_model,  # noqa: E402
                  step_sigma, timed_steps, unpatched_entry)

PROMPT = "a photo of a man and a woman at the beach"
PHRASES = ("man", "woman")
EVERY_PIXEL = " (every pixel)"


def encoder_for(model):
    """The FastComposer kind holding a random real-width fusion MLP (and a tiny image encoder: not used while sampling)."""
    from tiny_sd15_fastcomposer import save_fastcomposer

    path = save_fastcomposer(bench_data_dir() / "fastcomposer" / "fastcomposer_encoder.safetensors", unet=model)
    return pack("attention_patches.kinds.registry").load_subject_encoder(path)


def every_pixel(people) -> None:
    """Make ``people`` compute each person's swapped attention on every pixel (weight 0 outside the box)."""
    fusion_patch = pack("attention_patches.kinds.fastcomposer.fusion_patch")
    covers = people.box_covers

    def full_covers(height, width, downscale, device):
        out = []
        for cover in covers(height, width, downscale, device):
            weights = cover.weights
            if cover.pixels is not None:
                weights = torch.zeros(height * width, 1, device=device).index_copy_(0, cover.pixels, cover.weights)
            out.append(fusion_patch.BoxCover(None, weights))
        return tuple(out)

    people.box_covers = full_covers


def patched_models(model, encoder, counts, quick):
    """{name: patched ModelPatcher} through the kind's apply path, and the seconds each Apply took."""
    import comfy.patcher_extension
    import comfy.sd1_clip

    kinds = pack("attention_patches.kinds.base")
    layout_mod = pack("attention_patches.layout")
    fusion_patch = pack("attention_patches.kinds.fastcomposer.fusion_patch")
    clip = types.SimpleNamespace(tokenizer=comfy.sd1_clip.SD1Tokenizer())  # the real tokenizer finds the people's tokens
    generator = torch.Generator().manual_seed(1)

    def subjects(count):
        return tuple(encoder.with_encoding(kinds.Reference(PHRASES[i], torch.zeros(1, 1, 1, 3), clip=clip),
                                           torch.randn(768, generator=generator)) for i in range(count))

    def layout(count):
        return layout_mod.Layout(tuple(layout_mod.LayoutBox(*box, label=PHRASES[i]) for i, box in enumerate(row_boxes(count))), 512, 512)

    settings = kinds.ApplySettings(prompt=PROMPT)
    encoder.apply(model, subjects(1), None, settings)  # untimed: the first use is a cold start
    out, apply_seconds, people = {}, {}, {}
    for count in counts if not quick else counts[-1:]:
        name = f"no layout, {count} {'people' if count > 1 else 'person'}"
        start = time.perf_counter()
        out[name] = encoder.apply(model, subjects(count), None, settings)
        apply_seconds[name] = time.perf_counter() - start
    for count in counts:
        name = f"boxes, {count} {'people' if count > 1 else 'person'}"
        people_of_both = subjects(count)  # the same embeddings: both models must give the same step
        start = time.perf_counter()
        out[name] = encoder.apply(model, people_of_both, layout(count), settings)
        apply_seconds[name] = time.perf_counter() - start
        out[name + EVERY_PIXEL] = encoder.apply(model, people_of_both, layout(count), settings)
        every_pixel(_people(out[name + EVERY_PIXEL]))
    for name, patched in out.items():
        wrapper = patched.get_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, fusion_patch.WRAPPER_KEY)[0]
        people[name] = wrapper.people
    return out, apply_seconds, people


def _people(patched):
    return next(iter(patched.model_options["transformer_options"]["patches_replace"]["attn2"].values())).people[0]


class FusionStep(Step):
    """A Step that also times the patch's swapped attentions, so that the patch minus its text attention
    (what FastComposer adds to the step) is known: Step's *added* excludes every attention call."""

    running: FusionStep | None = None

    def __init__(self, *args):
        super().__init__(*args)
        self.swapped_seconds = 0.0
        self.fusion_added = []  # seconds the patches added to the text attention, per call

    def __call__(self):
        self.swapped_seconds = 0.0
        FusionStep.running = self
        try:
            out = super().__call__()
        finally:
            FusionStep.running = None
        self.fusion_added.append(self.added[-1] + self.swapped_seconds)
        return out

    @staticmethod
    def hook_swapped() -> None:
        attention = pack("attention_patches.kinds.fastcomposer.fusion_patch").BoxedFusionAttention
        original = attention._swapped

        def timed_swapped(self, *args):
            start = time.perf_counter()
            try:
                return original(self, *args)
            finally:
                if FusionStep.running is not None:
                    FusionStep.running.swapped_seconds += time.perf_counter() - start

        attention._swapped = timed_swapped


def fusion_seconds(people, context: torch.Tensor, calls: int = 20) -> float:
    """Median seconds of fusing the positive row's people tokens: what the wrapper does once per model call."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        people.fused(context)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(quick: bool = False, latent: int | None = None, rounds: int | None = None) -> tuple[str, list[dict]]:
    setup_runtime()
    latent = latent or 64
    rounds = rounds or (3 if quick else 5)
    counts = (1, 2)
    model, build_seconds = real_sd15_model()
    encoder = encoder_for(model)
    variants, apply_seconds, people = patched_models(model, encoder, counts, quick)
    sigma = step_sigma(model)
    assert all(p.is_active(sigma) for p in people.values()), "the timed step is outside the people's fused window"
    context = torch.randn(2, 77, 768, generator=torch.Generator().manual_seed(3))
    FusionStep.hook_swapped()
    steps, timings = timed_steps(model, variants, latent, rounds, context, step_class=FusionStep)
    added = {}
    for name, step in steps.items():
        if name.startswith("boxes"):
            assert step.instrument.calls == CROSS_ATTENTIONS, f"{name}: the patch did not run at every attn2"
            added[name] = statistics.median(step.fusion_added[-rounds:])

    differences = {}  # after the timing: these calls are not part of it
    for count in counts:
        name = f"boxes, {count} {'people' if count > 1 else 'person'}"
        differences[name] = float((steps[name]() - steps[name + EVERY_PIXEL]()).abs().max())
    fusion_ms = fusion_seconds(people[next(iter(people))], context[1:]) * 1000

    rows, records = [], []
    for name, step in steps.items():
        if name == "unpatched":
            row, record = unpatched_entry(timings)
            rows.append(row)
            records.append(record)
            continue
        record = {"variant": name, "ms": timings.median(name) * 1000, "vs_unpatched": timings.ratio(name, "unpatched")}
        added_ms = share = "-"
        if name in added:
            record["added_ms"], record["added_share"] = added[name] * 1000, added[name] / timings.median(name)
            added_ms, share = f"{record['added_ms']:.0f}", f"{record['added_share'] * 100:.2f}%"
        base_name = name.removesuffix(EVERY_PIXEL)
        if name.endswith(EVERY_PIXEL):
            record["pack_vs_every_pixel_step"] = timings.ratio(base_name, name)
            record["pack_vs_every_pixel_added"] = added[base_name] / added[name]
            record["max_abs_difference"] = differences[base_name]
        if name in apply_seconds:
            record["apply_ms"] = apply_seconds[name] * 1000
        records.append(record)
        rows.append([name, ms(timings.median(name)), ratio(record["vs_unpatched"]), per_round(timings, name), added_ms, share,
                     f"{record['apply_ms']:.1f}" if "apply_ms" in record else "-"])
    log_rounds(timings)
    gains = "; ".join(f"{r['variant'].removesuffix(EVERY_PIXEL)}: pack / every pixel {r['pack_vs_every_pixel_added']:.2f}x of the "
                      f"added time ({r['pack_vs_every_pixel_step']:.3f}x of the step), max abs difference of the step outputs "
                      f"{r['max_abs_difference']:.1e}" for r in records if "pack_vs_every_pixel_step" in r)
    table = markdown_table(STEP_COLUMNS, rows)
    text = (
        f"### (g) FastComposer: one SD1.5 UNet step, real size ({parameters(model) / 1e9:.2f} B parameters, fp32), "
        f"{latent * 8}x{latent * 8} ({latent}x{latent} latent), CFG batch of 2\n\n"
        f"`apply_model` on ComfyUI's real SD1.5 architecture (random weights; built in {build_seconds:.0f} s), median of "
        f"{rounds} interleaved rounds, at a step inside the fused window; *patched / unpatched* is the median of the "
        "per-round ratios of wall-clock step times. Patched models come from the FastComposer kind's `apply` (real-width "
        "fusion MLP, random embeddings). *No layout*: the official augmented conditioning (no attn2 patch; the fusion runs "
        f"once per model call: {fusion_ms:.2f} ms). *Boxes* (centred / side by side): the attn2 patch on the 16 "
        "cross-attentions; *every pixel* runs each person's swapped attention on all pixels (what the pack did before it "
        "restricted it to the box's pixels). The instrumented columns time, inside those same steps, the 16 attn2 patches "
        f"minus the text attention they call: what the boxes add to a step (the swapped attentions, the fused vectors' "
        f"keys/values, the blend). {gains}.\n\n" + table + "\n"
    )
    return text, records


def main(argv=None) -> int:
    args = section_args(__doc__, argv, latent={"type": int, "help": "latent side (default 64 = 512 px)"})
    emit(*run(args.quick, args.latent, args.rounds), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
