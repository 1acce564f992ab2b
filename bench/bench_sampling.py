"""(c) A whole sampling run (comfy.sample.sample, euler, CFG 7.5) of the tiny SDXL-topology model.

The tiny model has SDXL's exact transformer topology (all 70 cross-attention blocks) at small
widths, so this measures the per-call overhead of the patch inside ComfyUI's real sampler
loop rather than the arithmetic of the image branch. Subjects come from the real Encode
Reference node (tiny CLIP-Vision / CLIP), the patch from the real Apply node.
"""

from __future__ import annotations

import sys

import torch

from bench.common import (
    bench_data_dir, emit, interleaved, markdown_table, ms, pack, ratio, row_boxes, section_args, setup_runtime,
)

PROMPT = "a photo of a dog and a cat on a lawn"
NEGATIVE = "blurry"


def run(quick: bool = False, latent: int | None = None, rounds: int | None = None) -> tuple[str, list[dict]]:
    setup_runtime()
    import comfy.sample

    from devkit import tiny_models
    from devkit.helpers import apply, encode_subjects, encode_text, layout

    latent = latent or 64
    steps, cfg = 10, 7.5
    rounds = rounds or (3 if quick else 5)

    model = tiny_models.tiny_sdxl_model()
    clip = tiny_models.tiny_sdxl_clip()
    vision = tiny_models.tiny_clip_vision()
    encoder_path = tiny_models.save_subject_encoder(bench_data_dir() / "tiny" / "tiny_ms_adapter.safetensors")
    encoder = pack("attention_patches.kinds.registry").load_subject_encoder(encoder_path)
    subjects = encode_subjects(vision, clip, ["dog", "cat"])
    boxes = layout(row_boxes(2), ["dog", "cat"], width=latent * 8, height=latent * 8)
    variants = {
        "unpatched": model,
        "box, 2 subjects": apply(model, encoder, subjects, boxes)[0],
        "auto, 2 subjects (start_step 5)": apply(model, encoder, subjects, boxes, auto_routing=True, prompt=PROMPT,
                                                 start_step=5)[0],
    }
    positive, negative = encode_text(clip, PROMPT), encode_text(clip, NEGATIVE)
    empty = torch.zeros(1, 4, latent, latent)
    noise = torch.randn(empty.shape, generator=torch.Generator().manual_seed(0))

    def sampler(patcher):
        return lambda: comfy.sample.sample(patcher, noise, steps, cfg, "euler", "normal", positive, negative, empty,
                                           seed=0, disable_pbar=True)

    runs = {name: sampler(patcher) for name, patcher in variants.items()}
    with torch.inference_mode():
        timings = interleaved(runs, rounds=rounds, warmup=1, progress=f"tiny sampling {latent}x{latent}")
    rows, records = [], []
    for name in runs:
        value = 1.0 if name == "unpatched" else timings.ratio(name, "unpatched")
        records.append({"variant": name, "ms": timings.median(name) * 1000, "vs_unpatched": value})
        rows.append([name, ms(timings.median(name)), "-" if name == "unpatched" else ratio(value)])
    table = markdown_table(["model", "run ms", "patched / unpatched"], rows)
    text = (
        f"### (c) Whole sampling run, tiny SDXL-topology model, {latent * 8}x{latent * 8} ({latent}x{latent} latent)\n\n"
        f"`comfy.sample.sample`, {steps} steps euler, CFG {cfg}, median of {rounds} interleaved runs. The tiny UNet "
        "(widths 32-128, all 70 cross-attention blocks) makes the per-call costs of the patch visible that a real-size "
        "step hides; the patches come from the real Apply node.\n\n" + table + "\n"
    )
    return text, records


def main(argv=None) -> int:
    args = section_args(__doc__, argv, latent={"type": int})
    emit(*run(args.quick, args.latent, args.rounds), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
