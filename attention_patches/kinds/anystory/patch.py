"""AnyStory inside ComfyUI's FLUX: one DIFFUSION_MODEL wrapper and the DiT layer's block replacements.

The wrapper decides per model call which streams run (official step gating), appends the
scaled redux tokens to the T5 context, builds the reference stream (modulated at t = 0) and
the router stream, and leaves them for the block replacements of :mod:`...dit.blocks`; they
run the multi-stream blocks of ``streams`` on the model's own block modules and never fork
model code. The streams' LoRAs live in an ``nn.Module`` under a ModelPatcher the encoder
makes once per device pair and every block replacement returns from ``models()``, so ComfyUI's
memory manager loads, offloads and counts them with the MODEL. Rows of an
unconditional (negative) chunk run plain FLUX: AnyStory has no negative counterpart. The reference keys/values are exact across steps (the stream never
sees the image or t), so they are computed once per sampling run and distinct (pooled
text, guidance) row, and dropped when the run ends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

import comfy.model_patcher
import comfy.patcher_extension
from comfy.ldm.flux.layers import timestep_embedding

from ....models.anystory.checkpoint import AnyStoryLoRAs
from ...dit.blocks import BlockCall, acting_rows, block_chains, latent_tokens, methods_on, run_with_call
from ...lifecycle import PatchSet
from ...model_call import sampling_step, sampling_steps
from ...routing import box_routes
from ..base import SubjectSetupError
from .gating import Gating
from .streams import MASKED, BlockStreams, double_block, single_block

log = logging.getLogger("comfyui_multisubject.anystory")


@dataclass(frozen=True)
class AnyStorySettings:
    gating: Gating = Gating()
    redux_scale: float = 0.6
    ref_shift: float = 0.0
    ref_mask: bool = True
    ref_cache: bool = True


@dataclass(frozen=True, eq=False)
class SubjectTokens:
    """The encoded subjects, stacked: what the streams start from."""

    redux: torch.Tensor  # [S, 81, T5 dim], before redux_scale
    router: torch.Tensor  # [S, 9, T5 dim]
    ref_latents: torch.Tensor  # [S, Tr, packed latent channels]
    ref_mask: torch.Tensor  # [S, Tr] 1 = subject
    ref_ids: torch.Tensor  # [Tr, 3] position ids (left of the image), the same for every subject

    @property
    def count(self) -> int:
        return self.redux.shape[0]


class AnyStoryPatch:
    """Shared (never copied) by every clone and block replacement of one Apply."""

    def __init__(self, lora_patcher: comfy.model_patcher.ModelPatcher, subjects: SubjectTokens, settings: AnyStorySettings,
                 boxes: torch.Tensor | None = None, recorder=None):
        self.lora_patcher = lora_patcher  # the encoder's AnyStoryLoRAs, with the MODEL's devices
        self.loras: AnyStoryLoRAs = lora_patcher.model
        self.subjects = subjects
        self.settings = settings
        self.boxes = boxes
        self.recorder = recorder
        self.ref_cache: dict[bytes, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
        self.ref_stream_runs = 0  # how often the reference stream ran (observable: once per run and prompt)
        self._on_device: dict = {}  # (device, dtype) -> the LoRAs as this run uses them

    def __deepcopy__(self, memo):
        return self

    def start_run(self) -> None:
        self.release_caches()
        if self.recorder is not None:
            self.recorder.start_run()

    def release_caches(self) -> None:
        """Forget the reference cache and dtype casts: the end of a sampling run."""
        self.ref_cache.clear()
        self._on_device.clear()

    def held_caches(self) -> int:
        return len(self.ref_cache) + len(self._on_device)

    def own_models(self) -> list:
        return [self.lora_patcher]

    def patch_set(self, model) -> PatchSet:
        """The block replacements, the wrapper and the run lifecycle of this Apply on ``model``."""
        if any(isinstance(method, AnyStoryPatch) for method in methods_on(model)):
            raise SubjectSetupError("this MODEL is already patched by an AnyStory Apply; apply all subjects in one Apply node")
        return PatchSet(
            dit=block_chains(self, model.get_model_object("diffusion_model")),
            wrappers=((comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, self.diffusion_model_wrapper),),
            run_scoped=(self,),
        )

    def double(self, block, label, img, txt, vec, pe, streams: BlockStreams, transformer_options: dict):
        return double_block(block, label, img, txt, vec, pe, streams, transformer_options)

    def single(self, block, label, x, vec, pe, streams: BlockStreams, transformer_options: dict):
        return single_block(block, label, x, vec, pe, streams, transformer_options)

    def lora_on(self, device, dtype):
        """(ref, router, routing) LoRAs for this run: the memory manager's parameters, cast only if the dtype differs."""
        key = (device, dtype)
        if key not in self._on_device:
            self._on_device = {key: self.loras.on(device, dtype)}
        return self._on_device[key]

    def diffusion_model_wrapper(self, executor, x, timestep, context, y, guidance, ref_latents, control,
                                transformer_options, **kwargs):
        step = sampling_step(transformer_options)
        streams = self.settings.gating.at(step, sampling_steps(transformer_options))
        rows = acting_rows(transformer_options, x.shape[0])
        if not streams.any or (rows is not None and rows.numel() == 0):
            return executor(x, timestep, context, y, guidance, ref_latents, control, transformer_options, **kwargs)
        if kwargs.get("attention_mask") is not None:
            raise SubjectSetupError("AnyStory cannot run with a conditioning attention mask (e.g. Apply Style Model with "
                                    "strength_type 'attn_bias'); use strength_type 'multiply' or remove that node")
        flux = executor.class_obj
        if ref_latents is not None:
            raise SubjectSetupError("AnyStory runs on FLUX.1-dev; this conditioning carries reference latents (Kontext). "
                                    "Remove the ReferenceLatent node or use a FLUX.1-dev model")
        dtype, device = x.dtype, x.device
        ref_lora, router_lora, routing = self.lora_on(device, dtype)
        subjects = self.subjects
        count = subjects.count
        index = rows if rows is not None else torch.arange(x.shape[0], device=device)
        state = BlockStreams(count, context.shape[1], 0, ref_lora, router_lora, routing)
        if streams.redux:
            redux = (subjects.redux.to(device, context.dtype) * self.settings.redux_scale).reshape(1, -1, context.shape[-1])
            context = torch.cat((context, redux.expand(context.shape[0], -1, -1)), dim=1)
            state.redux_per_subject = subjects.redux.shape[1]
        if streams.ref:
            self._reference_stream(flux, state, y, guidance, index, device, dtype)
        if streams.router:
            tokens = flux.txt_in(subjects.router.to(device, dtype).reshape(1, -1, subjects.router.shape[-1]))
            tokens = router_lora("txt_in", subjects.router.to(device, dtype).reshape(1, -1, subjects.router.shape[-1]), tokens)
            state.router = tokens.expand(index.numel(), -1, -1)
            state.router_per_subject = subjects.router.shape[1]
            height, width = latent_tokens(x, flux.patch_size)
            if self.boxes is not None:
                state.box_routes = box_routes(self.boxes, height, width).to(device)
            if self.recorder is not None:
                state.on_routes = lambda label, route: self.recorder.add(step, height, width, route, label)
        call = BlockCall(flux, rows, state.text_tokens, state.redux_tokens, state)
        out = run_with_call(self, call, transformer_options,
                            lambda: executor(x, timestep, context, y, guidance, ref_latents, control, transformer_options, **kwargs))
        if state.store_ref is not None:  # only a completed call leaves a cache entry
            self._keep_reference(state)
        return out

    def _reference_stream(self, flux, state: BlockStreams, y, guidance, index, device, dtype) -> None:
        subjects, settings = self.subjects, self.settings
        vec_inputs = [y[index] if y is not None else torch.zeros(index.numel(), 1, device=device)]
        if guidance is not None:
            vec_inputs.append(guidance[index].reshape(-1, 1))
        keys = [bytes(row.float().cpu().numpy().tobytes()) for row in torch.cat([v.to(device) for v in vec_inputs], dim=1)]
        distinct = list(dict.fromkeys(keys))
        state.ref_rows = torch.tensor([distinct.index(k) for k in keys], device=device)
        bias = torch.full_like(subjects.ref_mask, settings.ref_shift)
        if settings.ref_mask:
            bias = bias + (1.0 - subjects.ref_mask) * MASKED
        state.ref_key_bias = None if not bool(bias.any()) else bias.reshape(1, -1).to(device)
        if settings.ref_cache and all(k in self.ref_cache for k in distinct):
            labels = self.ref_cache[distinct[0]].keys()
            state.cached_ref = {label: tuple(torch.cat([self.ref_cache[k][label][i] for k in distinct]) for i in (0, 1))
                                for label in labels}
            return
        first = [keys.index(k) for k in distinct]
        rows = index[torch.tensor(first, device=index.device)]
        state.ref_vec = reference_vec(flux, y[rows] if y is not None else None, None if guidance is None else guidance[rows],
                                      len(first), device, dtype)
        latents = subjects.ref_latents.to(device, dtype).reshape(1, -1, subjects.ref_latents.shape[-1])
        ref_lora = state.ref_lora
        state.ref = ref_lora("img_in", latents, flux.img_in(latents)).expand(len(first), -1, -1)
        ids = subjects.ref_ids.to(device).repeat(subjects.count, 1)[None]
        state.ref_pe = flux.pe_embedder(ids)  # float32, as ComfyUI keeps the image's
        state.store_ref = {} if settings.ref_cache else None
        state.distinct_rows = distinct
        self.ref_stream_runs += 1

    def _keep_reference(self, state: BlockStreams) -> None:
        for i, key in enumerate(state.distinct_rows):
            self.ref_cache[key] = {label: (k[i:i + 1], v[i:i + 1]) for label, (k, v) in state.store_ref.items()}


def reference_vec(flux, y, guidance, rows: int, device, dtype) -> torch.Tensor:
    """The modulation input of the reference stream: FLUX's vec at t = 0 with the row's guidance and pooled text."""
    vec = flux.time_in(timestep_embedding(torch.zeros(rows, device=device), 256).to(dtype))
    if flux.params.guidance_embed and guidance is not None:
        vec = vec + flux.guidance_in(timestep_embedding(guidance, 256).to(dtype))
    if flux.vector_in is not None:
        if y is None:
            y = torch.zeros((rows, flux.params.vec_in_dim), device=device, dtype=dtype)
        vec = vec + flux.vector_in(y[:, :flux.params.vec_in_dim])
    return vec
