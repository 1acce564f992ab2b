"""(h) LAMIC: mask-structure memory, masked vs unmasked joint attention, and the in-box attention share.

- *memory*: the mask structure of one model call (per-token class ids, the class table and the
  query groups' index vectors) for FLUX.2 / Kontext with 4 references at 1 MP (S = 512 + 5 x 4096),
  from LAMIC's real groups (models/lamic), against a dense bool and a dense bf16 additive [S, S].
- *attention*: one joint attention call at real sequence lengths and reduced width (2 heads of 64
  on CPU, 24 heads of 128 on CUDA): the pack's class-restricted attention (stage 1 and stage 2) vs
  the unmasked call of the same backend, timed interleaved in one run.
- *share*: on the tiny Kontext, how much of each reference's attention mass (the model's own,
  middle double block) fell inside its box, per step range, with LAMIC's masks and without them
  (soft strengths 0: the same ids and text, no restriction).
"""

from __future__ import annotations

import sys

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from common import emit, interleaved, markdown_table, ms, pack, ratio, section_args, setup_runtime  # noqa: E402

TARGET_MEMORY_MIB = 64
TARGET_RATIO = 1.3
TEXT = 512
FOUR_BOXES = ((0.0, 0.0, 0.6, 0.6), (0.4, 0.0, 1.0, 0.6), (0.0, 0.4, 0.6, 1.0), (0.4, 0.4, 1.0, 1.0))


def lamic_classes(target_grid: tuple[int, int], reference_grids, boxes, stage: int):
    """The real LAMIC token classes of one call ([text | target | references]) for the given boxes."""
    encoder = pack("attention_patches.kinds.lamic.encoder")
    kontext = pack("attention_patches.kinds.lamic.kontext")
    token_layout = pack("attention_patches.dit.token_layout")
    count = len(reference_grids)
    sads = [f"subject {i + 1},keep appearance." for i in range(count)]
    masks = encoder.LamicMasks(kontext.KontextAdapter(), sads, "a photo", torch.tensor(boxes[:count]),
                               ((),) + tuple((j,) for j in range(1, count)), None, True)  # reference k yields to k - 1
    layout = token_layout.TokenLayout(TEXT, target_grid, tuple(reference_grids), (target_grid[0] * 2, target_grid[1] * 2))
    return masks(layout, stage), layout


def memory_section():
    masked = pack("attention_patches.dit.masked_attention")
    rows, records = [], {}
    for stage in (1, 2):
        classes, layout = lamic_classes((64, 64), [(64, 64)] * 4, FOUR_BOXES, stage)
        tokens = layout.total
        structure = masked.structure_bytes(classes)
        records[f"stage{stage}"] = {"tokens": tokens, "classes": classes.table.shape[0], "structure_bytes": structure,
                                    "groups": len(classes.plan("cpu"))}
        rows.append([f"stage {stage}", tokens, classes.table.shape[0], len(classes.plan("cpu")), f"{structure / 2 ** 20:.2f} MiB",
                     f"{tokens * tokens / 2 ** 20:.0f} MiB", f"{2 * tokens * tokens / 2 ** 20:.0f} MiB"])
    worst = max(r["structure_bytes"] for r in records.values()) / 2 ** 20
    records["target_mib"], records["worst_mib"] = TARGET_MEMORY_MIB, worst
    title = "LAMIC mask structure, FLUX.2 / Kontext, 4 references at 1 MP (1024x1024 target and references)"
    return (f"### {title}\n\n" + markdown_table(
        ["mask", "S", "classes", "query groups", "pack's structure", "dense bool [S, S]", "dense bf16 additive"], rows)
        + f"\n\nTarget <= {TARGET_MEMORY_MIB} MiB: {'met' if worst <= TARGET_MEMORY_MIB else '**not met**'} "
        f"({worst:.2f} MiB).", records)


def attention_section(args, device, dtype):
    import comfy.ldm.modules.attention as comfy_attention

    masked = pack("attention_patches.dit.masked_attention")
    heads, dim = (24, 128) if device.type == "cuda" else (2, 64)
    functions = {"pytorch": comfy_attention.attention_pytorch.__wrapped__, "sub_quad": comfy_attention.attention_sub_quad.__wrapped__}
    cpu_backends = ("pytorch",) if device.type == "cuda" else ("pytorch", "sub_quad")
    # (label, target grid, reference grids, backends, rounds): the 1 MP case is one call of ~10 s per variant on 2 CPU cores
    cases = [("2 refs at 512x512, 1024x1024 target", (64, 64), [(32, 32)] * 2, cpu_backends, 3 if args.quick else 5)]
    if not args.quick:
        cases.append(("4 refs at 1024x1024, 1024x1024 target", (64, 64), [(64, 64)] * 4, ("pytorch",), 2))
    rows, records = [], []
    for label, target, refs, backends, rounds in cases:
        stages = {stage: lamic_classes(target, refs, FOUR_BOXES, stage)[0] for stage in (1, 2)}
        tokens = stages[1].tokens
        q, k, v = torch.randn(3, 1, heads, tokens, dim, device=device, dtype=dtype).unbind(0)
        for name in backends:
            def call(classes=None, func=functions[name]):
                with torch.no_grad():
                    if classes is None:
                        out = func(q, k, v, heads, skip_reshape=True)
                    else:
                        out = masked.masked_attention(lambda f, *a, **kw: f(*a, **kw), func, q, k, v, heads, classes,
                                                      kwargs={"skip_reshape": True})
                if device.type == "cuda":
                    torch.cuda.synchronize()
                return out

            timings = interleaved({"unmasked": call, "stage 1": lambda: call(stages[1]), "stage 2": lambda: call(stages[2])},
                                  rounds=args.rounds or rounds, inner=2 if rounds > 2 else 1, progress=f"{label} {name}")
            for variant in ("stage 1", "stage 2"):
                value = timings.ratio(variant, "unmasked")
                records.append({"case": label, "tokens": tokens, "backend": name, "mask": variant, "ratio": value,
                                "unmasked_s": timings.median("unmasked"), "masked_s": timings.median(variant)})
                rows.append([label, tokens, name, variant, ms(timings.median("unmasked")), ms(timings.median(variant)), ratio(value)])
    worst = max(r["ratio"] for r in records)
    title = f"Masked / unmasked joint attention, {heads} heads of {dim} ({dtype}, {device.type})"
    return (f"### {title}\n\n" + markdown_table(["sequence", "S", "backend", "mask", "unmasked ms", "masked ms", "ratio"], rows)
            + f"\n\nTarget <= {TARGET_RATIO}x: {'met' if worst <= TARGET_RATIO else '**not met**'} (max {worst:.3f}x).",
            {"rows": records, "worst": worst, "target": TARGET_RATIO})


def share_section():
    import comfy.sample

    setup_tests_path()
    import anystory_tiny as tiny_flux

    base = pack("attention_patches.kinds.base")
    layout_mod = pack("attention_patches.layout")
    recorder_mod = pack("attention_patches.recorder")
    share = pack("attention_patches.dit.attention_share")
    lamic = pack("attention_patches.kinds.lamic.encoder").LamicEncoder.builtin()
    model = tiny_flux.tiny_flux_model()
    phrases = ("a corgi", "a red ball")
    subjects = tuple(base.Subject(base.Reference(p, torch.zeros(1, 16, 16, 3))) for p in phrases)
    boxes = ((0.0, 0.25, 0.5, 1.0), (0.5, 0.0, 1.0, 0.75))
    layout = layout_mod.Layout(tuple(layout_mod.LayoutBox(*b) for b in boxes), 128, 128)
    generator = torch.Generator().manual_seed(0)
    refs = [torch.randn(1, tiny_flux.LATENT_CHANNELS, 8, 8, generator=generator) for _ in phrases]
    positive = [[torch.randn(1, TEXT, tiny_flux.TXT_DIM, generator=generator),
                 {"pooled_output": torch.randn(1, tiny_flux.POOLED_DIM, generator=generator), "guidance": 2.5,
                  "reference_latents": refs}]]
    latent = torch.zeros(1, tiny_flux.LATENT_CHANNELS, 16, 16)
    noise = torch.randn(latent.shape, generator=generator)
    rows, records = [], {}
    for name, scales in (("LAMIC", None), ("no masks (strengths 0)", (0.0, 0.0))):
        recorder = recorder_mod.RouteRecorder()
        patched = lamic.apply(model, subjects, layout, base.ApplySettings(prompt="".join(phrases), subject_scales=scales,
                                                                          kind_settings={"first_stage_ratio": 0.25}), recorder)
        with torch.no_grad():
            comfy.sample.sample(patched, noise, 8, 1.0, "euler", "simple", positive, positive, latent, seed=0, disable_pbar=True)
        ranges = share.shares_by_step_range(recorder, layout.tensor())
        records[name] = [{"steps": [a + 1, b + 1], "shares": s.tolist()} for a, b, s in ranges]
        for first, last, shares in ranges:
            rows.append([name, f"{first + 1}-{last + 1}"] + [f"{100 * float(s):.1f}%" for s in shares])
    title = "In-box attention share on the tiny Kontext (8 steps, 2 references, middle double block)"
    return f"### {title}\n\n" + markdown_table(["masks", "steps"] + [f"ref {i + 1} in box {i + 1}" for i in range(2)], rows), records


def setup_tests_path():
    from common import TESTS_DIR

    if str(TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR))


def main(argv=None):
    args = section_args(__doc__, argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    setup_runtime()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    memory_text, memory_records = memory_section()
    attention_text, attention_records = attention_section(args, device, dtype)
    share_text, share_records = share_section()
    emit("\n\n".join((memory_text, attention_text, share_text)) + "\n",
         {"memory": memory_records, "attention": attention_records, "share": share_records}, args)


if __name__ == "__main__":
    main()
