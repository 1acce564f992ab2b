"""The attn2 replace patch: text attention (or the patch it wraps) + routed image attention.

One :class:`MultiSubjectAttention` per cross-attention block holds every subject routing
applied to the model (one :class:`SubjectRouting` per Apply node). Per-run state (the
phrase-map histories, cast tokens, routes) lives on the routing, started and freed by the
lifecycle's callbacks (:mod:`.lifecycle`), so runs never share state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import torch

from .auto_routing import AutoRouting, PhraseMapHistory, phrase_attention_maps, phrase_selectors, pseudo_routes
from .layer_map import AttnKey
from .model_call import NEGATIVE, POSITIVE, chunk_rows, sampling_step, within
from .recorder import RouteRecorder
from .routed_attention import routed_image_attention
from .routing import RouteMask, box_routes
from .subject_bank import SubjectBank
from .unet.blocks import CrossAttentionPatch

log = logging.getLogger("comfyui_multisubject")

@dataclass(eq=False)
class SubjectRouting:
    """The subjects of one Apply node, shared (never copied) by all its patches and clones."""

    bank: SubjectBank
    bank_patcher: object  # comfy.model_patcher.ModelPatcher owning ``bank``
    boxes: torch.Tensor  # [S, 4] normalised x1, y1, x2, y2
    sigma_range: tuple[float, float] | None = None  # (start, end), sigmas decrease
    feather: float = 0.0  # soft box edge, in latent pixels
    auto: AutoRouting | None = None
    recorder: RouteRecorder | None = None
    _routes: dict = field(default_factory=dict, repr=False)
    _tokens: dict = field(default_factory=dict, repr=False)
    _selectors: dict = field(default_factory=dict, repr=False)
    _histories: dict = field(default_factory=dict, repr=False)  # (layer key) -> phrase-map history of this run
    _last_sigma: tuple = field(default=(None, True), repr=False)
    running: bool = field(default=False, repr=False)  # inside a sampling run (auto routing needs its steps)

    def __deepcopy__(self, memo):
        return self

    @property
    def needs_step(self) -> bool:
        """Only auto routing and route capture depend on the sampling step."""
        return self.auto is not None or self.recorder is not None

    def is_active(self, extra_options: dict) -> bool:
        """Inside the start/end window; decided once per model call (the 70 layers share its sigmas)."""
        sigmas = extra_options.get("sigmas")
        if self.sigma_range is None or sigmas is None:
            return True
        seen, active = self._last_sigma
        if seen is not sigmas:
            active = within(self.sigma_range, sigmas)
            self._last_sigma = (sigmas, active)
        return active

    def start_run(self) -> None:
        """A sampling run starts: fresh histories and route recordings."""
        self.release_caches()
        self.running = True
        if self.recorder is not None:
            self.recorder.start_run()

    def release_caches(self) -> None:
        """Drop what was cached for a sampling run (cast tokens, routes, selectors, histories) once it ends."""
        self._routes.clear()
        self._tokens.clear()
        self._selectors.clear()
        self._histories.clear()
        self._last_sigma = (None, True)
        self.running = False

    def held_caches(self) -> int:
        return len(self._routes) + len(self._tokens) + len(self._selectors) + len(self._histories)

    def history(self, key: AttnKey) -> PhraseMapHistory:
        return self._histories.setdefault(key, PhraseMapHistory())

    def box_routes(self, height: int, width: int, latent_height: int, device: torch.device) -> RouteMask:
        """The boxes' routes at this layer's grid, computed once per grid.

        The feather is given in latent pixels; the layer's scale comes from the real shapes of the call.
        """
        cache_key = (height, width, latent_height, device)
        if cache_key not in self._routes:
            feather = self.feather * height / latent_height if latent_height else self.feather
            self._routes[cache_key] = RouteMask(box_routes(self.boxes.to(device), height, width, feather))
        return self._routes[cache_key]

    def tokens(self, key: AttnKey, device: torch.device, dtype: torch.dtype, negative: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's subject keys/values (or the negative rows' ones) on ``device`` in ``dtype`` (cast once, then cached)."""
        layer = self.bank.layer(key, negative)
        if layer.key.device == device and layer.key.dtype == dtype:
            return layer.key, layer.value
        cache_key = (key, device, dtype, negative)
        if cache_key not in self._tokens:
            self._tokens[cache_key] = (layer.key.to(device, dtype), layer.value.to(device, dtype))
        return self._tokens[cache_key]

    def selectors(self, text_tokens: int, device: torch.device) -> torch.Tensor:
        """[T, S] averaging of each subject's phrase tokens (auto routing), built once per context length."""
        cache_key = (text_tokens, device)
        if cache_key not in self._selectors:
            self._selectors[cache_key] = phrase_selectors(self.auto.phrase_tokens, text_tokens, device)
        return self._selectors[cache_key]

    def image_attention(self, key: AttnKey, q: torch.Tensor, grid: tuple[int, int, int], heads: int,
                        step: int, maps: torch.Tensor | None = None) -> torch.Tensor:
        """Routed image-branch output [P, N, C] for the positive rows ``q`` at sampling ``step``.

        ``grid`` is (height, width) of this layer and the latent height; ``maps`` ([P, S, N] phrase
        maps of this call, given inside a sampling run) drive auto routing.
        """
        height, width, latent_height = grid
        keys, values = self.tokens(key, q.device, q.dtype)
        routes = self.box_routes(height, width, latent_height, q.device)
        if maps is not None:
            mean_maps, steps_seen = self.history(key).update(step, maps)
            if steps_seen >= self.auto.start_step:
                pseudo = pseudo_routes(mean_maps, self.auto.mask_threshold)
                if self.recorder is not None:
                    self.recorder.add(step, height, width, pseudo)
                rows = [routed_image_attention(q[r:r + 1], keys, values, RouteMask(pseudo[r]), heads) for r in range(q.shape[0])]
                return rows[0] if len(rows) == 1 else torch.cat(rows)
        if self.recorder is not None:
            self.recorder.add(step, height, width, routes.routes)
        return routed_image_attention(q, keys, values, routes, heads)

    def negative_image_attention(self, key: AttnKey, q: torch.Tensor, grid: tuple[int, int, int], heads: int) -> torch.Tensor:
        """Image-branch output [U, N, C] of the negative rows ``q`` over the bank's negative tokens, box-routed."""
        keys, values = self.tokens(key, q.device, q.dtype, negative=True)
        return routed_image_attention(q, keys, values, self.box_routes(*grid, q.device), heads)


class MultiSubjectAttention(CrossAttentionPatch):
    """attn2 replace patch for one cross-attention block: the wrapped patch (or text attention) plus
    every active routing's image branch; IPAdapter-family packs chain after it through ``.add``."""

    def __init__(self, key: AttnKey, routings: tuple[SubjectRouting, ...], base: Callable | None = None,
                 callbacks: list[tuple[Callable, dict]] | None = None):
        self.key = key
        self.routings = routings
        self.base = base  # a patch another pack (or an earlier node) put on this key
        self.callbacks = callbacks if callbacks is not None else []  # added later by IPAdapter-family packs

    @property
    def owners(self) -> tuple[SubjectRouting, ...]:
        return self.routings

    def with_owners(self, owners: tuple, base) -> MultiSubjectAttention:
        return MultiSubjectAttention(self.key, owners, base)

    def own_models(self) -> list:
        return [routing.bank_patcher for routing in self.routings]

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        heads = extra_options["n_heads"]
        cond_or_uncond = extra_options.get("cond_or_uncond", [POSITIVE])
        rows = chunk_rows(cond_or_uncond, q.shape[0])
        negative = chunk_rows(cond_or_uncond, q.shape[0], kind=NEGATIVE)
        routings = [r for r in self.routings if r.is_active(extra_options)]
        active = routings if rows is not None else []
        with_negative = [r for r in routings if r.bank.has_negative] if negative is not None else []
        if not active and not with_negative:
            return self.base_attention(q, k, v, extra_options)
        auto = [r for r in active if r.auto is not None and r.running]
        maps, text = {}, None
        if auto:
            # one softmax gives every auto routing's phrase maps and, unless another pack's patch
            # computes the text attention, the positive rows' text attention too
            selectors = torch.cat([r.selectors(k.shape[1], q.device) for r in auto], dim=1)
            all_maps, text = phrase_attention_maps(q[rows], k[rows], heads, selectors, v[rows] if self.base is None else None)
            maps = dict(zip(auto, all_maps.split([len(r.auto.phrase_tokens) for r in auto], dim=1)))
        if text is not None:
            out = torch.empty_like(q)
            if negative is not None:
                out[negative] = self.base_attention(q[negative], k[negative], v[negative], extra_options)
        else:
            out = self.base_attention(q, k, v, extra_options)
        height, width = extra_options["activations_shape"][-2:]
        original = extra_options.get("original_shape")
        grid = (height, width, original[-2] if original else height)
        if active:
            step = sampling_step(extra_options) if any(r.needs_step for r in active) else 0  # avoids a device sync
            q_pos = q[rows]
            image = None
            for routing in active:
                part = routing.image_attention(self.key, q_pos, grid, heads, step, maps.get(routing))
                image = part if image is None else image + part
            add_rows(out, rows, image.to(out.dtype), text)
        if with_negative:
            q_neg = q[negative]
            image = sum(r.negative_image_attention(self.key, q_neg, grid, heads) for r in with_negative)
            add_rows(out, negative, image.to(out.dtype))
        return out


def add_rows(out: torch.Tensor, rows: slice | torch.Tensor, image: torch.Tensor, text: torch.Tensor | None = None) -> None:
    """out[rows] += image, or out[rows] = text + image when the text attention was computed apart."""
    if text is not None:  # the rows are written once: text + image
        if isinstance(rows, slice):
            torch.add(text, image, out=out[rows])
        else:
            out.index_copy_(0, rows.to(out.device), image.add_(text))
    elif isinstance(rows, slice):
        out[rows] += image
    else:
        out.index_add_(0, rows.to(out.device), image)


def area_conditioning_warning(executor, guider, *args, **kwargs):
    """SAMPLER_SAMPLE wrapper: say once per run when a positive prompt uses area conditioning (boxes apply to its crop)."""
    warn_about_area_conditioning(getattr(guider, "conds", {}) or {})
    return executor(guider, *args, **kwargs)


def warn_about_area_conditioning(conds: dict) -> None:
    if any("area" in cond for cond in conds.get("positive", [])):
        log.warning(
            "Multi-subject attention: a positive prompt uses area conditioning; the sampler then runs that "
            "prompt on a crop of the latent and the subject boxes are applied to the crop, not to the whole image."
        )
