"""(a) One SDXL cross-attention call: unpatched vs the pack's attn2 patch, at real shapes.

References, measured in the same rounds as the patched calls:

- *plain*: ComfyUI's ``optimized_attention`` on q, k, v (what an unpatched UNet runs);
- *lower bound*: plain + one fused SDPA of the positive rows' queries over all S*16 subject
  tokens (the cheapest conceivable image branch: no routing, no masks);
- *lower bound + separate softmax* (auto routing only): lower bound + a separate softmax of the
  positive row over the text tokens, i.e. what auto routing would cost if it did not take the
  positive row's text attention from the softmax of its phrase maps (the patch shares it).

The patched call is the pack's real ``MultiSubjectAttention`` (SubjectBank + SubjectRouting,
random keys/values), i.e. the object sampling calls at every attn2 block.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from bench.common import (
    SCHEDULE, Timings, compute_device, emit, interleaved, markdown_table, ms, pack, ratio, row_boxes, section_args, setup_runtime,
    unet_dtypes,
)

TEXT_TOKENS = 77
TEXT_WIDTH = 2048
TOKENS_PER_SUBJECT = 16
COND_OR_UNCOND = [1, 0]  # CFG batch: negative row first, as ComfyUI often sends it
POSITIVE_ROW = 1
SUBJECT_COUNTS = (1, 2, 4, 8)
AUTO_START_STEP = 5

# (image size, grid h, grid w, hidden, heads, attn2 key, downscale)
GRIDS = (
    ("1024x1024", 64, 64, 640, 10, ("input", 4, 0), 2),
    ("1024x1024", 32, 32, 1280, 20, ("input", 7, 0), 4),
    ("768x1344", 48, 84, 640, 10, ("input", 4, 0), 2),
    ("768x1344", 24, 42, 1280, 20, ("input", 7, 0), 4),
)


def sdxl_dtype() -> torch.dtype:
    import comfy.supported_models
    from bench.bench_unet import SDXL_PARAMETERS

    return unet_dtypes(comfy.supported_models.SDXL, SDXL_PARAMETERS)[0]


def overlapping_boxes(count: int) -> list[tuple[float, float, float, float]]:
    """A chain: each box overlaps half of its neighbour (2*count - 1 covering sets)."""
    step = 1.0 / (count + 1)
    return [(i * step, 0.15, (i + 2) * step, 0.85) for i in range(count)]


def smooth_field(batch: int, height: int, width: int, channels: int, generator: torch.Generator) -> torch.Tensor:
    """[batch, h*w, C] queries with spatial structure (blob-like phrase maps, as a real UNet's)."""
    low = torch.randn(batch, channels, max(2, height // 8), max(2, width // 8), generator=generator)
    field = F.interpolate(low, size=(height, width), mode="bilinear", align_corners=False)
    field = field + 0.3 * torch.randn(batch, channels, height, width, generator=generator)
    return field.flatten(2).transpose(1, 2).contiguous()


class Case:
    """q/k/v of one attn2 call and the pack's patch objects for it."""

    def __init__(self, grid, subjects: int, seed: int = 0):
        import comfy.model_patcher

        self.patch_mod = pack("attention_patches.patch")
        bank_mod = pack("attention_patches.subject_bank")
        auto_mod = pack("attention_patches.auto_routing")
        self.size, self.height, self.width, self.hidden, self.heads, self.key, downscale = grid
        self.subjects = subjects
        generator = torch.Generator().manual_seed(seed)
        device, dtype = compute_device(), sdxl_dtype()  # where and how an SDXL attn2 call runs here

        def random(*shape):
            return torch.randn(*shape, generator=generator).to(device, dtype)
        self.q = smooth_field(2, self.height, self.width, self.hidden, generator).to(device, dtype)
        self.k = random(2, TEXT_TOKENS, self.hidden)
        self.v = random(2, TEXT_TOKENS, self.hidden)
        keys = random(subjects, TOKENS_PER_SUBJECT, self.hidden)
        values = random(subjects, TOKENS_PER_SUBJECT, self.hidden) * 0.6
        self.flat_keys = keys.reshape(1, -1, self.hidden)
        self.flat_values = values.reshape(1, -1, self.hidden)
        bank = bank_mod.SubjectBank({self.key: (keys, values)})
        self.bank_patcher = comfy.model_patcher.ModelPatcher(bank, device, device)
        self.bank = bank
        # phrase tokens: one or two tokens per subject, like "dog", "teddy bear"
        phrases = tuple(tuple(range(1 + 3 * s, 2 + 3 * s + (s % 2))) for s in range(subjects))
        self.auto = auto_mod.AutoRouting(phrases, mask_threshold=0.5, start_step=AUTO_START_STEP)

    def patch(self, boxes, auto: bool = False):
        routing = self.patch_mod.SubjectRouting(
            bank=self.bank, bank_patcher=self.bank_patcher, boxes=torch.tensor(boxes, dtype=torch.float32),
            auto=self.auto if auto else None,
        )
        return self.patch_mod.MultiSubjectAttention(self.key, (routing,))

    def options(self, step: int = 0) -> dict:
        return {
            "n_heads": self.heads, "dim_head": self.hidden // self.heads, "attn_precision": None,
            "activations_shape": [2, self.hidden, self.height, self.width], "original_shape": [2, 4, 0, 0],
            "cond_or_uncond": list(COND_OR_UNCOND), "sample_sigmas": SCHEDULE, "sigmas": SCHEDULE[step:step + 1].repeat(2),
            "block": self.key[:2], "block_index": 0, "transformer_index": self.key[2],
        }

    def plain(self):
        import comfy.ldm.modules.attention as attention

        return attention.optimized_attention(self.q, self.k, self.v, self.heads)

    def fused_image_branch(self):
        """One SDPA of the positive row over every subject token."""
        q = self.q[POSITIVE_ROW:POSITIVE_ROW + 1]
        d = self.hidden // self.heads
        qh = q.view(1, -1, self.heads, d).transpose(1, 2)
        kh = self.flat_keys.view(1, -1, self.heads, d).transpose(1, 2)
        vh = self.flat_values.view(1, -1, self.heads, d).transpose(1, 2)
        return F.scaled_dot_product_attention(qh, kh, vh).transpose(1, 2).reshape(1, -1, self.hidden)

    def lower_bound(self):
        out = self.plain()
        out[POSITIVE_ROW:POSITIVE_ROW + 1] += self.fused_image_branch()
        return out

    def phrase_probabilities(self):
        """The separate softmax: softmax(q k^T / sqrt(d)) of the positive row over the text tokens (the patch shares it)."""
        d = self.hidden // self.heads
        qh = self.q[POSITIVE_ROW:POSITIVE_ROW + 1].view(1, -1, self.heads, d).transpose(1, 2)
        kh = self.k[POSITIVE_ROW:POSITIVE_ROW + 1].view(1, -1, self.heads, d).transpose(1, 2)
        return (torch.matmul(qh, kh.transpose(-1, -2)) * d**-0.5).softmax(dim=-1)

    def separate_softmax(self):
        """Lower bound + the separate softmax: not a lower bound for auto routing, which shares that softmax."""
        self.phrase_probabilities()
        return self.lower_bound()

    def patched_call(self, patch, step: int = 0):
        options = self.options(step)
        return lambda: patch(self.q, self.k, self.v, options)

    def auto_call(self, patch):
        """A call past start_step (pseudo routes active), after the real per-step history of the earlier steps."""
        for routing in patch.routings:
            routing.start_run()  # what the lifecycle does when a sampling run starts
        for step in range(AUTO_START_STEP):
            patch(self.q, self.k, self.v, self.options(step))
        return self.patched_call(patch, AUTO_START_STEP)


def groups_of(case: Case, boxes, auto: bool) -> int:
    routing_mod = pack("attention_patches.routing")
    auto_mod = pack("attention_patches.auto_routing")
    if not auto:
        return len(routing_mod.RouteMask(routing_mod.box_routes(torch.tensor(boxes), case.height, case.width)).covering_sets())
    selectors = auto_mod.phrase_selectors(case.auto.phrase_tokens, case.k.shape[1], case.k.device)
    maps, _ = auto_mod.phrase_attention_maps(case.q[POSITIVE_ROW:POSITIVE_ROW + 1], case.k[POSITIVE_ROW:POSITIVE_ROW + 1],
                                             case.heads, selectors)
    return len(routing_mod.RouteMask(auto_mod.pseudo_routes(maps, case.auto.mask_threshold)[0]).covering_sets())


def run(quick: bool = False, grids=None, counts=None, rounds=None) -> tuple[str, list[dict]]:
    setup_runtime()
    torch.manual_seed(0)
    rounds, inner = (rounds or 9, 2) if quick else (rounds or 11, 3)
    grids = grids or (GRIDS[:2] if quick else GRIDS)
    counts = counts or ((1, 2, 4) if quick else SUBJECT_COUNTS)
    rows, records = [], []
    with torch.inference_mode():
        for grid in grids:
            for subjects in counts:
                case = Case(grid, subjects)
                layouts = {"box: " + ("centred" if subjects == 1 else "side by side" if subjects == 2 else f"{subjects} in a row"):
                           (row_boxes(subjects), False)}
                if subjects > 1:
                    layouts["box: overlapping chain"] = (overlapping_boxes(subjects), False)
                layouts["auto (pseudo routes)"] = (row_boxes(subjects), True)
                variants = {"plain": case.plain, "lower bound": case.lower_bound,
                            "lower bound + separate softmax": case.separate_softmax}
                for name, (boxes, auto) in layouts.items():
                    patch = case.patch(boxes, auto)
                    variants[name] = case.auto_call(patch) if auto else case.patched_call(patch)
                timings: Timings = interleaved(variants, rounds=rounds, warmup=1, inner=inner,
                                               progress=f"attention {case.height}x{case.width} S={subjects}")
                for name, (boxes, auto) in layouts.items():
                    record = {
                        "image": case.size, "grid": f"{case.height}x{case.width}", "hidden": f"{case.hidden}/{case.heads}",
                        "subjects": subjects, "routing": name, "groups": groups_of(case, boxes, auto),
                        "plain_ms": timings.median("plain") * 1000, "lower_bound_ms": timings.median("lower bound") * 1000,
                        "patched_ms": timings.median(name) * 1000,
                        "vs_plain": timings.ratio(name, "plain"), "vs_lower_bound": timings.ratio(name, "lower bound"),
                        "lower_bound_vs_plain": timings.ratio("lower bound", "plain"),
                        "auto": auto,
                        "vs_separate_softmax": timings.ratio(name, "lower bound + separate softmax") if auto else None,
                    }
                    records.append(record)
                    rows.append([record["image"], record["grid"], record["hidden"], subjects, name, record["groups"],
                                 ms(timings.median("plain")), ms(timings.median("lower bound")), ms(timings.median(name)),
                                 ratio(record["vs_plain"]), ratio(record["vs_lower_bound"]),
                                 ratio(record["vs_separate_softmax"]) if auto else "-"])
    table = markdown_table(
        ["image", "grid", "hidden/heads", "subjects", "routing", "pixel groups", "plain ms", "lower bound ms", "patched ms",
         "patched / plain", "patched / lower bound", "auto: patched / (lower bound + separate softmax)"], rows)
    text = (
        f"### (a) One cross-attention call (CFG batch of 2, 77 text tokens; {str(sdxl_dtype()).replace('torch.', '')}, "
        f"{compute_device().type})\n\n"
        f"Median of {rounds} interleaved rounds, each variant timed as the best of {inner} back-to-back calls per round; "
        "ratios are medians of per-round ratios. "
        "*plain* = ComfyUI's `optimized_attention(q, k, v)`; *lower bound* = plain + one SDPA of the positive row over all "
        "S*16 subject tokens; *lower bound + separate softmax* = lower bound + a separate softmax(q k^T / sqrt(d)) of the "
        "positive row over the text tokens: what auto routing would cost if it did not share that softmax between its "
        "phrase maps and the positive row's text attention (the patch does; a reference, not a lower bound). Auto "
        "routing is measured past `start_step` (pseudo routes active, from queries with smooth spatial structure). "
        "*pixel groups* = distinct sets of covering subjects (the routed attention runs all of them in one fused kernel).\n\n" + table + "\n"
    )
    return text, records


def main(argv=None) -> int:
    args = section_args(__doc__, argv, grids={"help": "comma-separated grid indices into GRIDS, e.g. 0,1"},
                        subjects={"help": "comma-separated subject counts, e.g. 1,4"})
    grids = [GRIDS[int(i)] for i in args.grids.split(",")] if args.grids else None
    counts = [int(n) for n in args.subjects.split(",")] if args.subjects else None
    emit(*run(args.quick, grids, counts, args.rounds), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
