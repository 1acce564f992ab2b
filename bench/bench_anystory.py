"""(e) AnyStory on FLUX: one FLUX double block patched vs unpatched, and the attention bias memory.

- *block*: ComfyUI's own ``DoubleStreamBlock`` (random weights) at FLUX.1-dev width, plain vs the
  pack's multi-stream block in a cached step (redux tokens, router, cached reference keys of
  two subjects): time and peak memory (CUDA peak when a GPU is present, else the bytes of the
  attention biases the call allocates).
- *bias*: the bias one attention call needs at real FLUX size (1024x1024, 2 subjects, cached
  step and reference step): the pack's split head-broadcast biases vs the official dense
  ``[B, 24, Q, K]`` construction (bf16), computed from the tensors the pack really builds.
"""

from __future__ import annotations


import torch

from bench.common import (
    compute_device, emit, interleaved, markdown_table, ms, pack, ratio, section_args, setup_runtime, unet_dtypes,
)

SUBJECTS = 2
TEXT = 512
REDUX, ROUTER = 81, 9
REF_TOKENS = 1024
HEADS_REAL = 24
FLUX_DEV_PARAMETERS = 11_901_408_320


def fill(module):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) / max(p.shape[-1], 1) ** 0.5 if p.dim() > 1 else torch.zeros_like(p))
    return module


def block_section(args, device, dtype):
    import comfy.ops
    from comfy.ldm.flux.layers import DoubleStreamBlock, EmbedND

    streams = pack("attention_patches.kinds.anystory.streams")
    lora = pack("models.anystory.lora")
    checkpoint = pack("models.anystory.checkpoint")
    hidden, heads, grid, text, ref_tokens = (768, 6, 16, 64, 64) if args.quick else (3072, 24, 64, TEXT, REF_TOKENS)
    block = fill(DoubleStreamBlock(hidden, heads, 4.0, qkv_bias=True, operations=comfy.ops.disable_weight_init)).to(device, dtype)
    pe_embedder = EmbedND(hidden // heads, 10000, [16, 56, 56] if hidden // heads == 128 else [4, 6, 6])
    img = torch.randn(1, grid * grid, hidden, device=device, dtype=dtype)
    txt = torch.randn(1, text + SUBJECTS * REDUX, hidden, device=device, dtype=dtype)
    vec = torch.randn(1, hidden, device=device, dtype=dtype)
    ids = torch.zeros(1, text + SUBJECTS * REDUX + grid * grid, 3)
    ids[0, -grid * grid:, 1] = torch.arange(grid).repeat_interleave(grid).float()
    ids[0, -grid * grid:, 2] = torch.arange(grid).repeat(grid).float()
    pe = pe_embedder(ids).to(device)
    plain_txt = txt[:, :text]
    plain_pe = torch.cat((pe[:, :, :text], pe[:, :, text + SUBJECTS * REDUX:]), dim=2)

    def rank(out_features, in_features, r=64):
        return lora.LowRank(torch.randn(r, in_features, device=device, dtype=dtype) * 0.01,
                            torch.randn(out_features, r, device=device, dtype=dtype) * 0.01)
    router_lora = lora.StreamLoRA()
    for target, out_features, in_features in (("b.txt_mod.lin", 6 * hidden, hidden), ("b.txt_attn.qkv", 3 * hidden, hidden),
                                              ("b.txt_attn.proj", hidden, hidden), ("b.txt_mlp.2", hidden, 4 * hidden)):
        router_lora.add(target, rank(out_features, in_features))
    routing = {"b": checkpoint.RoutingLoRA(rank(hidden, hidden, 128), rank(hidden, hidden, 128))}
    ref_kv = tuple(torch.randn(1, heads, SUBJECTS * ref_tokens, hidden // heads, device=device, dtype=dtype) for _ in range(2))
    mask = torch.ones(SUBJECTS * ref_tokens, device=device)
    mask[::3] = 0

    def patched():
        s = streams.BlockStreams(SUBJECTS, text, REDUX, lora.StreamLoRA(), router_lora, routing,
                                 router=torch.randn(1, SUBJECTS * ROUTER, hidden, device=device, dtype=dtype),
                                 ref_key_bias=((1 - mask) * streams.MASKED)[None], cached_ref={"b": ref_kv})
        return streams.double_block(block, "b", img, txt, vec, pe, s, {})

    def plain():
        return block(img=img.clone(), txt=plain_txt.clone(), vec=vec, pe=plain_pe)

    with torch.no_grad():
        timings = interleaved({"plain": plain, "anystory": patched}, rounds=args.rounds or (2 if args.quick else 5))
        peaks = {}
        for name, fn in (("plain", plain), ("anystory", patched)):
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                fn()
                peaks[name] = torch.cuda.max_memory_allocated() - base
    rows = [["plain FLUX block", ms(timings.median("plain")), "1.000x", _mib(peaks.get("plain"))],
            ["AnyStory block (cached step)", ms(timings.median("anystory")), ratio(timings.ratio("anystory", "plain")),
             _mib(peaks.get("anystory"))]]
    title = f"One FLUX double block, width {hidden}, {grid}x{grid} tokens, {SUBJECTS} subjects ({dtype}, {device.type})"
    return f"### {title}\n\n" + markdown_table(["variant", "time", "vs plain", "peak memory"], rows), {
        "block": {"hidden": hidden, "grid": grid, "plain_s": timings.median("plain"), "anystory_s": timings.median("anystory"),
                  "ratio": timings.ratio("anystory", "plain"), "peaks": peaks}}


def _mib(value):
    return "n/a (CPU)" if value is None else f"{value / 2 ** 20:.0f} MiB"


def bias_section(args):
    streams = pack("attention_patches.kinds.anystory.streams")
    lora = pack("models.anystory.lora")
    rows, records = [], []
    grid = 64  # 1024x1024
    for step, with_ref_stream in (("cached step", False), ("reference step", True)):
        ref_len = SUBJECTS * REF_TOKENS
        text_len, image_len = TEXT + SUBJECTS * REDUX, grid * grid
        queries = text_len + image_len + (ref_len if with_ref_stream else 0)
        keys = text_len + image_len + ref_len
        official = queries * keys * HEADS_REAL * 2  # [1, 24, Q, K] bf16
        s = streams.BlockStreams(SUBJECTS, TEXT, REDUX, lora.StreamLoRA(), lora.StreamLoRA(), {},
                                 ref_key_bias=torch.zeros(1, ref_len),
                                 cached_ref={"b": (torch.empty(1, 1, ref_len, 1), None)})
        route = torch.zeros(1, SUBJECTS, image_len)
        text_bias, image_bias = streams.main_biases(s, text_len, image_len, route, 1, torch.bfloat16, torch.device("cpu"))
        ours = text_bias.nbytes + image_bias.nbytes
        rows.append([step, f"{queries} x {keys}", f"{official / 2 ** 30:.2f} GiB", f"{ours / 2 ** 20:.1f} MiB",
                     f"{official / ours:.0f}x"])
        records.append({"step": step, "official_bytes": official, "pack_bytes": ours})
    text = ("### Attention bias of one call at 1024x1024, 2 subjects (bf16)\n\n" + markdown_table(
        ["step", "queries x keys", "official dense [B,24,Q,K]", "pack (split, head-broadcast)", "smaller by"], rows)
        + "\n\nReference queries attend within their own subject (no bias) and router queries without bias in the pack.")
    return text, {"bias": records}


def main(argv=None):
    args = section_args(__doc__, argv)
    setup_runtime()
    import comfy.supported_models

    device = compute_device()
    dtype, _ = unet_dtypes(comfy.supported_models.Flux, FLUX_DEV_PARAMETERS)  # bf16 on most GPUs, fp32 on a CPU
    block_text, block_records = block_section(args, device, dtype)
    bias_text, bias_records = bias_section(args)
    emit(block_text + "\n\n" + bias_text + "\n", {**block_records, **bias_records}, args)


if __name__ == "__main__":
    main()
