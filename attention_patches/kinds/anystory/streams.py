"""AnyStory's multi-stream FLUX blocks, run on ComfyUI's own block modules.

Besides text (+ redux tokens, part of the text stream) and image, two streams pass every
block: the reference stream (each subject's VAE latent, modulated at t = 0, its own LoRA on
the image-side modules) and the router stream (9 tokens per subject, its own LoRA on the
text-side modules). The rules, per block:

- text and image queries see [text, redux, image, ref] keys; ref keys get ``ref_shift`` and
  -100 where the reference mask is background;
- image queries also get -100 on the redux and ref keys of every subject the router did not
  route them to. The routing map is recomputed in every block from the base projections plus
  the routing-map LoRAs, averaged over heads and each subject's router tokens, hard argmax;
- ref queries attend within their own subject; router queries to image and router keys.

Biases are one value per key (text queries) or per image query and key (image queries),
broadcast over heads: never the dense per-head bias. LoRA deltas are added next to the
modules' outputs, so the modules run with their weights as loaded (and offloaded). Every
attention runs through core's FLUX attention (``comfy.ldm.flux.math.attention`` with the call's
``transformer_options``): the kernel ComfyUI picked, other packs' attention overrides and core's
fp16 clamping apply, and with every extra stream off a block computes exactly what core's does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

import comfy.ldm.flux.math as flux_math
from comfy.ldm.flux.layers import apply_mod
from comfy.ldm.flux.math import apply_rope, apply_rope1

from ....models.anystory.checkpoint import RoutingLoRA
from ....models.anystory.lora import StreamLoRA

MASKED = -100.0  # the official bias on keys a query must not use


@dataclass(eq=False)
class BlockStreams:
    """What the blocks of one model call share: the extra streams and how to bias attention.

    The ref and router streams are updated block by block in place of this object (the rows
    AnyStory acts on and the token layout are the DiT layer's, :class:`...dit.blocks.BlockCall`).
    """

    subjects: int
    text_tokens: int  # T5 tokens in the text stream, before the redux tokens
    redux_per_subject: int  # 81 when redux tokens follow the text, else 0
    ref_lora: StreamLoRA
    router_lora: StreamLoRA
    routing: dict[str, RoutingLoRA]
    ref: torch.Tensor | None = None  # [R, S*Tr, H] reference stream (None: cached or off)
    ref_vec: torch.Tensor | None = None  # [R, H] modulation input at t = 0
    ref_pe: torch.Tensor | None = None  # rope of the reference tokens, [1, 1, S*Tr, ...]
    ref_key_bias: torch.Tensor | None = None  # [R or 1, S*Tr]: ref_shift and -100 on background (None: 0)
    router: torch.Tensor | None = None  # [R, S*9, H]
    router_per_subject: int = 9
    cached_ref: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None  # block -> ref keys, values (after norm+rope)
    store_ref: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None  # filled when the ref stream runs
    box_routes: torch.Tensor | None = None  # [S, HW]: the router may only route inside each subject's box
    on_routes: Callable[[str, torch.Tensor], None] | None = None
    distinct_rows: list = field(default_factory=list)  # the cache key of each ref stream batch entry
    ref_rows: torch.Tensor | None = None  # per row, its entry in the ref stream's batch (None: the same batch)
    maps: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def redux_tokens(self) -> int:
        return self.subjects * self.redux_per_subject

    @property
    def ref_active(self) -> bool:
        return self.ref is not None or self.cached_ref is not None

    def ref_keys(self, label: str, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.store_ref is not None:
            self.store_ref[label] = (k, v)
        return k, v

    def for_rows(self, kv: tuple[torch.Tensor, torch.Tensor], rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference keys/values (one per distinct row) for every row of the batch."""
        k, v = kv
        if k.shape[0] == rows and self.ref_rows is None:
            return kv
        if k.shape[0] == 1:
            return k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)
        return k[self.ref_rows], v[self.ref_rows]


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, L, h*d] -> [B, h, L, d]."""
    b, length, _ = x.shape
    return x.view(b, length, heads, -1).transpose(1, 2)


def qkv_heads(qkv: torch.Tensor, heads: int):
    b, length, _ = qkv.shape
    return qkv.view(b, length, 3, heads, -1).permute(2, 0, 3, 1, 4)


def attend(q, k, v, bias, transformer_options: dict) -> torch.Tensor:
    """[B, h, Q, d] attention through core's FLUX path -> [B, Q, h*d]; ``bias`` broadcasts over heads ([B, 1, Q or 1, K])."""
    return flux_math.attention(q, k, v, pe=None, mask=bias, transformer_options=transformer_options)


def per_subject_attention(q, k, v, subjects: int, transformer_options: dict) -> torch.Tensor:
    """Each subject's reference tokens attend only to themselves: [B, h, S*T, d] -> [B, S*T, h*d]."""
    b, h, length, d = q.shape

    def fold(x):
        return x.reshape(b, h, subjects, length // subjects, d).transpose(1, 2).reshape(b * subjects, h, length // subjects, d)
    out = attend(fold(q), fold(k), fold(v), None, transformer_options)
    return out.reshape(b, length, h * d)


def joint_attention(q, keys, values, text_len: int, text_bias, image_bias, transformer_options: dict) -> torch.Tensor:
    """[B, Q, h*d] attention of the [text | image] queries; one call when both share their bias, as core's block."""
    if text_bias is image_bias:
        return attend(q, keys, values, text_bias, transformer_options)
    return torch.cat((attend(q[:, :, :text_len], keys, values, text_bias, transformer_options),
                      attend(q[:, :, text_len:], keys, values, image_bias, transformer_options)), dim=1)


def clamped(x: torch.Tensor) -> torch.Tensor:
    """Core's fp16 guard at the end of a block."""
    return torch.nan_to_num(x, nan=0.0, posinf=65504, neginf=-65504) if x.dtype == torch.float16 else x


def modulation(module, vec: torch.Tensor, lora: StreamLoRA, target: str):
    """A block's Modulation of ``vec`` with a stream's LoRA on its linear: (shift, scale, gate) chunks."""
    x = F.silu(vec[:, None, :])
    out = lora(target, x, module.lin(x))
    return out.chunk(module.multiplier, dim=-1)


def routing_query_key(routing: RoutingLoRA, query_base, router_normed, key_base, image_normed, query_norm, key_norm,
                      image_pe, heads: int, like: torch.Tensor):
    """Router query and image key of the routing map: base projections + routing-map LoRA, QK-norm, RoPE (image only)."""
    query = query_norm(split_heads(query_base + routing.query.delta(router_normed), heads))
    key = key_norm(split_heads(key_base + routing.key.delta(image_normed), heads))
    return query, apply_rope1(key.to(like), image_pe)


def routing_means(query: torch.Tensor, key: torch.Tensor, subjects: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Router query [B, h, S*9, d] and image key [B, h, HW, d] -> ([B, S, d], [B, HW, d]) means."""
    b, _, tokens, d = query.shape
    return query.mean(dim=1).view(b, subjects, tokens // subjects, d).mean(dim=2), key.mean(dim=1)


def routing_map(query_mean: torch.Tensor, key_mean: torch.Tensor, boxes: torch.Tensor | None = None):
    """(logits [B, S, HW], one-hot route [B, S, HW]); with ``boxes`` [S, HW] the route is router AND box."""
    logits = query_mean @ key_mean.transpose(1, 2)
    route = F.one_hot(logits.argmax(dim=1), logits.shape[1]).transpose(1, 2).to(logits.dtype)
    if boxes is not None:
        route = route * boxes.to(route)
    return logits, route


def main_biases(s: BlockStreams, text_len: int, image_len: int, route: torch.Tensor | None, rows: int,
                dtype, device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Additive biases of text queries [B, 1, 1, K] and image queries [B, 1, HW, K] (None: no bias)."""
    ref_len = s.subjects * (s.ref.shape[1] // s.subjects if s.ref is not None else 0)
    if s.ref is None and s.cached_ref is not None:
        ref_len = next(iter(s.cached_ref.values()))[0].shape[2]
    keys = text_len + image_len + ref_len
    column = None
    if ref_len and s.ref_key_bias is not None:
        column = torch.zeros(rows, keys, dtype=dtype, device=device)
        column[:, text_len + image_len:] = s.ref_key_bias.to(device, dtype)
    text_bias = None if column is None else column[:, None, None, :]
    if route is None:
        return text_bias, text_bias
    penalty = ((1.0 - route) * MASKED).transpose(1, 2).to(dtype)  # [B, HW, S]
    image_bias = torch.zeros(rows, image_len, keys, dtype=dtype, device=device)
    if column is not None:
        image_bias += column[:, None, :]
    if s.redux_per_subject:
        redux = slice(s.text_tokens, s.text_tokens + s.redux_tokens)
        image_bias[:, :, redux] += penalty.repeat_interleave(s.redux_per_subject, dim=2)
    if ref_len:
        image_bias[:, :, text_len + image_len:] += penalty.repeat_interleave(ref_len // s.subjects, dim=2)
    return text_bias, image_bias[:, None]


def _route(s: BlockStreams, label: str, routing_query, routing_key) -> torch.Tensor:
    query_mean, key_mean = routing_means(routing_query, routing_key, s.subjects)
    _, route = routing_map(query_mean.float(), key_mean.float(), s.box_routes)
    s.maps[label] = route
    if s.on_routes is not None:
        s.on_routes(label, route)
    return route


def double_block(block, label: str, img, txt, vec, pe, s: BlockStreams, transformer_options: dict):
    """One FLUX double block with every AnyStory stream; returns (img, txt), updates ``s.ref``/``s.router``."""
    hidden, heads = block.hidden_size, block.num_heads
    text_len, image_len = txt.shape[1], img.shape[1]
    img_mod1, img_mod2 = block.img_mod(vec)
    txt_mod1, txt_mod2 = block.txt_mod(vec)
    img_normed = apply_mod(block.img_norm1(img), 1 + img_mod1.scale, img_mod1.shift)
    img_qkv = block.img_attn.qkv(img_normed)
    img_q, img_k, img_v = qkv_heads(img_qkv, heads)
    img_q, img_k = block.img_attn.norm(img_q, img_k, img_v)
    txt_normed = apply_mod(block.txt_norm1(txt), 1 + txt_mod1.scale, txt_mod1.shift)
    txt_q, txt_k, txt_v = qkv_heads(block.txt_attn.qkv(txt_normed), heads)
    txt_q, txt_k = block.txt_attn.norm(txt_q, txt_k, txt_v)
    pe_img = pe[:, :, text_len:]
    q, k = apply_rope(torch.cat((txt_q, img_q), dim=2), torch.cat((txt_k, img_k), dim=2), pe)
    img_k = k[:, :, text_len:]

    ref_kv = None
    if s.ref is not None:
        ref_mod1, ref_mod2 = _pairs(modulation(block.img_mod, s.ref_vec, s.ref_lora, f"{label}.img_mod.lin"))
        ref_normed = apply_mod(block.img_norm1(s.ref), 1 + ref_mod1[1], ref_mod1[0])
        ref_qkv = s.ref_lora(f"{label}.img_attn.qkv", ref_normed, block.img_attn.qkv(ref_normed))
        ref_q, ref_k, ref_v = qkv_heads(ref_qkv, heads)
        ref_q, ref_k = block.img_attn.norm(ref_q, ref_k, ref_v)
        ref_q, ref_k = apply_rope1(ref_q, s.ref_pe), apply_rope1(ref_k, s.ref_pe)
        ref_attn = per_subject_attention(ref_q, ref_k, ref_v, s.subjects, transformer_options)
        ref_kv = s.ref_keys(label, ref_k, ref_v)
    elif s.cached_ref is not None:
        ref_kv = s.cached_ref[label]

    route = None
    if s.router is not None:
        rt_mod1, rt_mod2 = _pairs(modulation(block.txt_mod, vec, s.router_lora, f"{label}.txt_mod.lin"))
        rt_normed = apply_mod(block.txt_norm1(s.router), 1 + rt_mod1[1], rt_mod1[0])
        rt_base = block.txt_attn.qkv(rt_normed)
        route = _route(s, label, *routing_query_key(
            s.routing[label], rt_base[..., :hidden], rt_normed, img_qkv[..., hidden:2 * hidden], img_normed,
            block.txt_attn.norm.query_norm, block.img_attn.norm.key_norm, pe_img, heads, img_k))
        rt_q, rt_k, rt_v = qkv_heads(s.router_lora(f"{label}.txt_attn.qkv", rt_normed, rt_base), heads)
        rt_q, rt_k = block.txt_attn.norm(rt_q, rt_k, rt_v)
        rt_attn = attend(rt_q, torch.cat((img_k, rt_k), dim=2), torch.cat((img_v, rt_v), dim=2), None, transformer_options)

    keys, values = k, torch.cat((txt_v, img_v), dim=2)
    if ref_kv is not None:
        ref_kv = s.for_rows(ref_kv, img.shape[0])
        keys, values = torch.cat((keys, ref_kv[0]), dim=2), torch.cat((values, ref_kv[1]), dim=2)
    text_bias, image_bias = main_biases(s, text_len, image_len, route, img.shape[0], q.dtype, img.device)
    attn = joint_attention(q, keys, values, text_len, text_bias, image_bias, transformer_options)
    txt_attn, img_attn = attn[:, :text_len], attn[:, text_len:]

    img = img + apply_mod(block.img_attn.proj(img_attn), img_mod1.gate)
    img = img + apply_mod(block.img_mlp(apply_mod(block.img_norm2(img), 1 + img_mod2.scale, img_mod2.shift)), img_mod2.gate)
    txt = txt + apply_mod(block.txt_attn.proj(txt_attn), txt_mod1.gate)
    txt = clamped(txt + apply_mod(block.txt_mlp(apply_mod(block.txt_norm2(txt), 1 + txt_mod2.scale, txt_mod2.shift)), txt_mod2.gate))

    if s.ref is not None:
        s.ref = _double_tail(block.img_attn.proj, block.img_norm2, block.img_mlp, s.ref_lora, f"{label}.img_attn.proj",
                             f"{label}.img_mlp.2", s.ref, ref_attn, ref_mod1, ref_mod2)
    if s.router is not None:
        s.router = _double_tail(block.txt_attn.proj, block.txt_norm2, block.txt_mlp, s.router_lora, f"{label}.txt_attn.proj",
                                f"{label}.txt_mlp.2", s.router, rt_attn, rt_mod1, rt_mod2)
    return img, txt


def _pairs(chunks):
    """Six modulation chunks -> ((shift, scale, gate), (shift, scale, gate))."""
    return tuple(chunks[:3]), tuple(chunks[3:])


def _double_tail(proj, norm2, mlp, lora: StreamLoRA, proj_target: str, mlp_target: str, x, attn, mod1, mod2):
    x = x + mod1[2] * lora(proj_target, attn, proj(attn))
    hidden = mlp[1](mlp[0](apply_mod(norm2(x), 1 + mod2[1], mod2[0])))
    return x + mod2[2] * lora(mlp_target, hidden, mlp[2](hidden))


def single_block(block, label: str, x, vec, pe, s: BlockStreams, transformer_options: dict):
    """One FLUX single block over cat(text, image) with every AnyStory stream; returns x."""
    hidden, heads = block.hidden_size, block.num_heads
    text_len = s.text_tokens + s.redux_tokens
    image_len = x.shape[1] - text_len
    mod, _ = block.modulation(vec)
    normed = apply_mod(block.pre_norm(x), 1 + mod.scale, mod.shift)
    lin = block.linear1(normed)
    qkv, mlp = torch.split(lin, [3 * hidden, lin.shape[-1] - 3 * hidden], dim=-1)
    q, k, v = qkv_heads(qkv, heads)
    q, k = block.norm(q, k, v)
    q, k = apply_rope(q, k, pe)

    ref_kv = None
    if s.ref is not None:
        ref_mod = modulation(block.modulation, s.ref_vec, s.ref_lora, f"{label}.modulation.lin")
        s.ref, ref_kv = _single_stream(block, label, s.ref_lora, s.ref, ref_mod, s,
                                       lambda rq, rk, rv: per_subject_attention(rq, rk, rv, s.subjects, transformer_options), s.ref_pe)
        ref_kv = s.ref_keys(label, *ref_kv)
    elif s.cached_ref is not None:
        ref_kv = s.cached_ref[label]

    route = None
    if s.router is not None:
        rt_mod = modulation(block.modulation, vec, s.router_lora, f"{label}.modulation.lin")
        image_k, image_v = k[:, :, text_len:], v[:, :, text_len:]

        def router_attention(rq, rk, rv):
            return attend(rq, torch.cat((image_k, rk), dim=2), torch.cat((image_v, rv), dim=2), None, transformer_options)

        def routing(rt_normed, rt_base):
            return _route(s, label, *routing_query_key(
                s.routing[label], rt_base[..., :hidden], rt_normed, lin[:, text_len:, hidden:2 * hidden], normed[:, text_len:],
                block.norm.query_norm, block.norm.key_norm, pe[:, :, text_len:], heads, k))

        s.router, _, route = _single_stream(block, label, s.router_lora, s.router, rt_mod, s, router_attention, None, routing)

    keys, values = k, v
    if ref_kv is not None:
        ref_kv = s.for_rows(ref_kv, x.shape[0])
        keys, values = torch.cat((k, ref_kv[0]), dim=2), torch.cat((v, ref_kv[1]), dim=2)
    text_bias, image_bias = main_biases(s, text_len, image_len, route, x.shape[0], q.dtype, x.device)
    attn = joint_attention(q, keys, values, text_len, text_bias, image_bias, transformer_options)
    out = block.linear2(torch.cat((attn, block.mlp_act(mlp)), dim=2))
    return clamped(x + apply_mod(out, mod.gate))


def _single_stream(block, label, lora: StreamLoRA, stream, mod, s: BlockStreams, attention, pe, routing=None):
    """An extra stream through a single block's modules with its LoRA: (new stream, (k, v)[, route])."""
    hidden, heads = block.hidden_size, block.num_heads
    shift, scale, gate = mod
    normed = apply_mod(block.pre_norm(stream), 1 + scale, shift)
    base = block.linear1(normed)
    route = routing(normed, base) if routing is not None else None
    lin = lora(f"{label}.linear1", normed, base)
    qkv, mlp = torch.split(lin, [3 * hidden, lin.shape[-1] - 3 * hidden], dim=-1)
    q, k, v = qkv_heads(qkv, heads)
    q, k = block.norm(q, k, v)
    if pe is not None:
        q, k = apply_rope1(q, pe), apply_rope1(k, pe)
    attn = attention(q, k, v)
    inner = torch.cat((attn, block.mlp_act(mlp)), dim=2)
    stream = stream + gate * lora(f"{label}.linear2", inner, block.linear2(inner))
    if routing is not None:
        return stream, (k, v), route
    return stream, (k, v)
