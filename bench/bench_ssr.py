"""(f) SSR-Encoder on SD1.5: one real-size SD1.5 UNet step, unpatched vs the SSR-Encoder kind's patch.

The patched models come from the SSR-Encoder kind's ``apply`` with a real-size random
SSR-Encoder (every key and shape of the released aligner and 16 layers) and ``Subject`` objects
whose SSR encodings (6 x 77 tokens of width 768, and their unconditional twins for the negative
row) are random: 1, 2 and 4 subjects, with boxes (centred / side by side / 4 in a row) and
without a layout (every subject over the whole image, the official behaviour).
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from common import bench_data_dir, emit, markdown_table, ms, pack, ratio, row_boxes, section_args, setup_runtime  # noqa: E402
from sd15 import (CROSS_ATTENTIONS, STEP_COLUMNS, log_rounds, parameters, per_round, real_sd15_model,  # noqa: E402
                  timed_steps, unpatched_entry)

PHRASES = ("dog", "cat", "hat", "teddy bear")
TOKENS = 6 * 77  # SSR tokens per subject


def real_size_encoder():
    """The SSR-Encoder kind loaded from a random aligner + layers pair with the released keys and real shapes."""
    from tiny_sd15 import save_ssr_files, ssr_manifest

    folder = bench_data_dir() / "ssr_real_size"
    aligner = folder / "ssr_aligner.safetensors"
    if not aligner.exists() or not (folder / "ssr_attentions.safetensors").exists():
        save_ssr_files(folder, ssr_manifest(), "community", dims={})  # dims {}: every dimension at its real size
    return pack("attention_patches.kinds.registry").load_subject_encoder(aligner)


def patched_models(model, encoder, counts, layouts):
    """{name: patched ModelPatcher} through the kind's apply path, and the seconds each Apply took."""
    kinds = pack("attention_patches.kinds.base")
    ssr = pack("attention_patches.kinds.ssr_encoder.encoder")
    layout_mod = pack("attention_patches.layout")
    generator = torch.Generator().manual_seed(1)

    def subjects(count):
        return tuple(encoder.with_encoding(kinds.Reference(PHRASES[i], torch.zeros(1, 1, 1, 3)), ssr.SSREncoding(
            torch.randn(TOKENS, 768, generator=generator), torch.randn(TOKENS, 768, generator=generator))) for i in range(count))

    def layout(count):
        return layout_mod.Layout(tuple(layout_mod.LayoutBox(*box, label=PHRASES[i]) for i, box in enumerate(row_boxes(count))), 512, 512)

    out, apply_seconds = {}, {}
    encoder.apply(model, subjects(1), None, kinds.ApplySettings())  # untimed: the encoder's first use is a cold start
    for boxed in layouts:
        for count in counts:
            name = f"{'boxes' if boxed else 'no layout'}, {count} subject{'s' if count > 1 else ''}"
            start = time.perf_counter()
            out[name] = encoder.apply(model, subjects(count), layout(count) if boxed else None, kinds.ApplySettings(scale=0.6))
            apply_seconds[name] = time.perf_counter() - start
    return out, apply_seconds


def run(quick: bool = False, latent: int | None = None, rounds: int | None = None) -> tuple[str, list[dict]]:
    setup_runtime()
    latent = latent or 64
    rounds = rounds or (3 if quick else 5)
    counts = (1, 4) if quick else (1, 2, 4)
    model, build_seconds = real_sd15_model()
    encoder = real_size_encoder()
    variants, apply_seconds = patched_models(model, encoder, counts, layouts=(True, False))
    steps, timings = timed_steps(model, variants, latent, rounds)
    for name, step in steps.items():
        if name != "unpatched":
            assert step.instrument.calls == CROSS_ATTENTIONS and min(step.added) > 0, f"{name}: the patch did not run at every attn2"

    rows, records = [], []
    for name, step in steps.items():
        if name == "unpatched":
            row, record = unpatched_entry(timings)
            rows.append(row)
            records.append(record)
            continue
        added = statistics.median(step.added[-rounds:])
        record = {"variant": name, "ms": timings.median(name) * 1000, "vs_unpatched": timings.ratio(name, "unpatched"),
                  "added_ms": added * 1000, "added_share": added / timings.median(name),
                  "apply_ms": apply_seconds[name] * 1000}
        records.append(record)
        rows.append([name, ms(timings.median(name)), ratio(record["vs_unpatched"]), per_round(timings, name),
                     f"{added * 1000:.0f}", f"{record['added_share'] * 100:.2f}%", f"{record['apply_ms']:.0f}"])
    log_rounds(timings)
    table = markdown_table(STEP_COLUMNS, rows)
    text = (
        f"### (f) SSR-Encoder: one SD1.5 UNet step, real size ({parameters(model) / 1e9:.2f} B parameters, fp32), "
        f"{latent * 8}x{latent * 8} ({latent}x{latent} latent), CFG batch of 2\n\n"
        f"`apply_model` on ComfyUI's real SD1.5 architecture (random weights; built in {build_seconds:.0f} s), median of "
        f"{rounds} interleaved rounds; *patched / unpatched* is the median of the per-round ratios of wall-clock step times. "
        f"The instrumented columns time, inside those same steps, the {CROSS_ATTENTIONS} attn2 patches minus the text "
        f"attention they call: what the kind adds to a step (the subjects' {TOKENS} tokens each, routed, on the positive row; "
        "the unconditional tokens on the negative row). Patched models come from the SSR-Encoder kind's `apply` with a "
        "real-size random SSR-Encoder and random encodings; boxes: centred / side by side / 4 in a row; no layout: every "
        "subject over the whole image (official). *Apply* projects the tokens through the 16 layers' SSR keys/values, once "
        "per Apply (after an untimed first apply).\n\n" + table + "\n"
    )
    return text, records


def main(argv=None) -> int:
    args = section_args(__doc__, argv, latent={"type": int, "help": "latent side (default 64 = 512 px)"})
    emit(*run(args.quick, args.latent, args.rounds), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
