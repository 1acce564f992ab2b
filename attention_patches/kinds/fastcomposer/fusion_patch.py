"""FastComposer at sampling time: the fused embedding replaces the text embedding at each person's token.

Per model call, a DIFFUSION_MODEL wrapper fuses each person's token of the positive rows'
context (the text vector there is the prompt's own, so fusion happens at run time, once per
call, not once per layer), from the switch noise level on. Negative rows are never touched.

- No layout: the fused vectors simply replace the context at those positions before the UNet
  runs, exactly the official augmented conditioning (every layer, every other patch sees it).
- With a layout (beyond the official code): the context stays text-only, and an attn2 patch on
  every cross-attention lets each person's fused token act only inside that person's box: the
  block's attention with the person's token swapped for the layer's own ``to_k``/``to_v`` of
  the fused vector, blended in by the box route (overlaps share). Attention is independent per
  query pixel, so that swapped attention runs only on the pixels the person's box weighs (a
  pixel of weight 0 would gain exactly nothing from it). A patch another pack put on the same
  block is wrapped, never replaced (and sees the whole batch and grid it expects).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import torch


from ....models.fastcomposer.fusion import PostfuseModule
from ...layer_map import AttnKey
from ...model_call import POSITIVE, chunk_rows, within
from ...routing import box_routes
from ...unet.blocks import CrossAttentionPatch

log = logging.getLogger("comfyui_multisubject.fastcomposer")

FUSED_KEY = "multisubject_fastcomposer_fused"  # transformer_options entry: {id(people): (row index, fused [P, S, C])}


def fuse_context(postfuse: PostfuseModule, context: torch.Tensor, positions: tuple[int, ...],
                 embeddings: torch.Tensor) -> torch.Tensor:
    """[B, S, C] fused vectors of ``context`` [B, T, C] at ``positions`` with ``embeddings`` [S, C] (fp32 math)."""
    text = context[:, list(positions)].float()
    objects = embeddings.to(context.device, torch.float32).expand(context.shape[0], -1, -1)
    return postfuse.fuse(text, objects).to(context.dtype)


def augmented_context(postfuse: PostfuseModule, context: torch.Tensor, positions: tuple[int, ...],
                      embeddings: torch.Tensor) -> torch.Tensor:
    """The official augmented conditioning: a copy of ``context`` with the fused vectors at ``positions``."""
    out = context.clone()
    out[:, list(positions)] = fuse_context(postfuse, context, positions, embeddings)
    return out


@dataclass(frozen=True)
class BoxCover:
    """Where one person's fused token acts at one grid: its pixels (None: every pixel) and their weights [n, 1]."""

    pixels: torch.Tensor | None
    weights: torch.Tensor


@dataclass(eq=False)
class FusedPeople:
    """The people of one Apply node, shared (never copied) by its wrapper, its patches and clones of the MODEL."""

    postfuse: PostfuseModule  # fp32, on the CPU; copied once per device it runs on
    embeddings: torch.Tensor  # [S, C] float32, one per person (views averaged)
    positions: tuple[int, ...]  # context token of each person
    sigma_range: tuple[float, float]  # (start, end): fused while end <= sigma <= start
    boxes: torch.Tensor | None = None  # [S, 4] normalised x1, y1, x2, y2; None = no layout
    feather: float = 0.0  # soft box edge, in latent pixels
    _modules: dict = field(default_factory=dict, repr=False)
    _routes: dict = field(default_factory=dict, repr=False)
    _warned: bool = field(default=False, repr=False)

    def __deepcopy__(self, memo):
        return self

    def start_run(self) -> None:
        self.release_caches()

    def release_caches(self) -> None:
        """Drop the per-device fusion copies and box covers once a sampling run ends."""
        self._modules.clear()
        self._routes.clear()

    def held_caches(self) -> int:
        return len(self._modules) + len(self._routes)

    def is_active(self, sigmas: torch.Tensor | None) -> bool:
        return within(self.sigma_range, sigmas)

    def fusion_on(self, device: torch.device) -> PostfuseModule:
        if device not in self._modules:
            self._modules[device] = self.postfuse if device == torch.device("cpu") else _copy_to(self.postfuse, device)
        return self._modules[device]

    def fits(self, context: torch.Tensor) -> bool:
        if max(self.positions) < context.shape[1]:
            return True
        if not self._warned:
            self._warned = True
            log.warning("FastComposer: a person's token (position %d) is beyond this prompt's %d tokens; is Apply's prompt "
                        "the positive prompt? Those people are not fused.", max(self.positions), context.shape[1])
        return False

    def fused(self, context: torch.Tensor) -> torch.Tensor:
        """[P, S, C] fused vectors of these positive context rows."""
        with torch.no_grad():
            return fuse_context(self.fusion_on(context.device), context, self.positions, self.embeddings)

    def box_covers(self, height: int, width: int, downscale: float, device: torch.device) -> tuple[BoxCover, ...]:
        """Per person, the pixels of this grid its fused attention reaches and how much each takes (overlaps share).

        Computed once per grid and run (found without a device sync at every layer call).
        """
        key = (height, width, device)
        if key not in self._routes:
            routes = box_routes(self.boxes.to(device), height, width, self.feather / max(downscale, 1.0))
            weights = (routes / routes.sum(dim=0, keepdim=True).clamp(min=1.0)).unsqueeze(-1)  # [S, N, 1]
            covers = []
            for person in weights:
                inside = person[:, 0] > 0
                if bool(inside.all()):
                    covers.append(BoxCover(None, person))
                else:
                    pixels = inside.nonzero()[:, 0]
                    covers.append(BoxCover(pixels, person[pixels]))
            self._routes[key] = tuple(covers)
        return self._routes[key]


def _copy_to(module: PostfuseModule, device: torch.device) -> PostfuseModule:
    copy = PostfuseModule(module.embed_dim)
    copy.load_state_dict(module.state_dict())
    return copy.to(device).eval().requires_grad_(False)


class FusionWrapper:
    """DIFFUSION_MODEL wrapper: fuse the positive rows' person tokens once per model call."""

    def __init__(self, people: FusedPeople):
        self.people = people

    def __deepcopy__(self, memo):
        return self

    def __call__(self, executor, x, timesteps, context, y, control, transformer_options, **kwargs):
        people = self.people
        cond_or_uncond = transformer_options.get("cond_or_uncond", [POSITIVE])
        rows = chunk_rows(cond_or_uncond, context.shape[0]) if context is not None else None
        if rows is None or not people.is_active(transformer_options.get("sigmas")) or not people.fits(context):
            return executor(x, timesteps, context, y, control, transformer_options, **kwargs)
        index = torch.arange(context.shape[0], device=context.device)[rows]
        fused = people.fused(context[index])
        if people.boxes is None:
            context = context.clone()
            context[index[:, None], torch.tensor(people.positions, device=context.device)] = fused
        else:
            transformer_options = {**transformer_options,
                                   FUSED_KEY: {**transformer_options.get(FUSED_KEY, {}), id(people): (index, fused)}}
        return executor(x, timesteps, context, y, control, transformer_options, **kwargs)


class BoxedFusionAttention(CrossAttentionPatch):
    """attn2 replace patch: each person's fused token acts inside that person's box only."""

    def __init__(self, key: AttnKey, attn2: torch.nn.Module, people: tuple[FusedPeople, ...], base: Callable | None = None,
                 callbacks: list[tuple[Callable, dict]] | None = None):
        self.key = key
        self.attn2 = attn2  # the block's CrossAttention: its to_k/to_v project the fused vectors
        self.people = people
        self.base = base
        self.callbacks = callbacks if callbacks is not None else []  # added later by IPAdapter-family packs

    @property
    def owners(self) -> tuple[FusedPeople, ...]:
        return self.people

    def with_owners(self, owners: tuple, base) -> BoxedFusionAttention:
        return BoxedFusionAttention(self.key, self.attn2, owners, base)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        out = self.base_attention(q, k, v, extra_options)
        fused_by_people = extra_options.get(FUSED_KEY, {})
        active = [(p, fused_by_people[id(p)]) for p in self.people if id(p) in fused_by_people]
        if not active:
            return out
        height, width = extra_options["activations_shape"][-2:]
        original = extra_options.get("original_shape")
        downscale = original[-2] / height if original is not None else 1.0
        for people, (index, fused) in active:
            fused_k, fused_v = self.attn2.to_k(fused.to(k.dtype)), self.attn2.to_v(fused.to(v.dtype))
            changes = []  # every person's change is taken against the text output, then all are added in person order
            for s, (position, cover) in enumerate(zip(people.positions, people.box_covers(height, width, downscale, q.device))):
                if cover.pixels is not None and cover.pixels.numel() == 0:
                    continue
                where = (index,) if cover.pixels is None else (index[:, None], cover.pixels)
                swapped = self._swapped(q, k, v, index, position, fused_k[:, s], fused_v[:, s], cover.pixels, extra_options)
                changes.append((where, cover.weights.to(out.dtype) * (swapped - out[where])))
            for where, change in changes:
                out[where] += change
        return out

    def _swapped(self, q, k, v, index, position, key, value, pixels, extra_options):
        """The positive rows' attention at ``pixels`` (None: all) with ``position`` holding the fused key/value."""
        if self.base is None:  # only the positive rows at the person's pixels need computing
            k_s, v_s = k[index].clone(), v[index].clone()
            k_s[:, position], v_s[:, position] = key, value
            return self.base_attention(q[index] if pixels is None else q[index[:, None], pixels], k_s, v_s, extra_options)
        # another pack's patch sees the whole batch and grid it expects (it may rely on both, e.g. regional masks)
        k_s, v_s = k.clone(), v.clone()
        k_s[index, position], v_s[index, position] = key, value
        swapped = self.base_attention(q, k_s, v_s, extra_options)[index]
        return swapped if pixels is None else swapped[:, pixels]
