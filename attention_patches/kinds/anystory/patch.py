"""AnyStory inside ComfyUI's FLUX: one DIFFUSION_MODEL wrapper and a replacement per block.

The wrapper decides per model call which streams run (official step gating), appends the
scaled redux tokens to the T5 context, builds the reference stream (modulated at t = 0) and
the router stream, and leaves them in ``transformer_options`` for the block replacements;
they run the multi-stream blocks of ``streams`` on the model's own block modules and never
fork model code. The streams' LoRAs live in an ``nn.Module`` under a ModelPatcher the encoder
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
from ...chaining import ChainedPatch
from ...patch import sampling_step
from ...routing import box_routes
from ..base import SubjectSetupError
from .gating import Gating
from .streams import MASKED, BlockStreams, double_block, single_block

log = logging.getLogger("comfyui_multisubject.anystory")

STATE_KEY = "anystory_streams"
WRAPPER_KEY = "comfyui_multisubject_anystory"
UNCOND = 1


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

    def reset(self) -> None:
        """Forget the reference cache and dtype casts: the end of a sampling run."""
        self.ref_cache.clear()
        self._on_device.clear()

    def install(self, model) -> None:
        """Register the wrapper and every block replacement on ``model`` (a clone), chaining foreign dit patches."""
        transformer_options = model.model_options.setdefault("transformer_options", {})
        replaced = transformer_options.get("patches_replace", {}).get("dit", {})
        if any(isinstance(p, BlockReplacement) for p in replaced.values()):
            raise SubjectSetupError("this MODEL is already patched by an AnyStory Apply; apply all subjects in one Apply node")
        flux = model.get_model_object("diffusion_model")
        for kind, blocks in (("double", flux.double_blocks), ("single", flux.single_blocks)):
            for index in range(len(blocks)):
                foreign = replaced.get((f"{kind}_block", index))
                model.set_model_patch_replace(BlockReplacement(self, kind, index, foreign), "dit", f"{kind}_block", index)
        model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, self.diffusion_model_wrapper)
        model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, self.outer_sample_wrapper)

    def outer_sample_wrapper(self, executor, *args, **kwargs):
        self.reset()
        if self.recorder is not None:
            self.recorder.start_run()
        try:
            return executor(*args, **kwargs)
        finally:
            self.reset()

    def lora_on(self, device, dtype):
        """(ref, router, routing) LoRAs for this run: the memory manager's parameters, cast only if the dtype differs."""
        key = (device, dtype)
        if key not in self._on_device:
            self._on_device = {key: self.loras.on(device, dtype)}
        return self._on_device[key]

    def diffusion_model_wrapper(self, executor, x, timestep, context, y, guidance, ref_latents, control,
                                transformer_options, **kwargs):
        schedule = transformer_options.get("sample_sigmas")
        steps = max(len(schedule) - 1, 1) if schedule is not None else 1
        step = sampling_step(transformer_options)
        streams = self.settings.gating.at(step, steps)
        rows = active_rows(transformer_options.get("cond_or_uncond"), x.shape[0])
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
        state = BlockStreams(count, context.shape[1], 0, ref_lora, router_lora, routing, model=flux)
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
        state.rows = rows
        transformer_options[STATE_KEY] = (self, state)
        try:
            out = executor(x, timestep, context, y, guidance, ref_latents, control, transformer_options, **kwargs)
        finally:
            transformer_options.pop(STATE_KEY, None)
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


def active_rows(cond_or_uncond, batch: int) -> torch.Tensor | None:
    """Row indices of the conditional chunks (None: every row; AnyStory has no negative counterpart)."""
    if not cond_or_uncond or UNCOND not in cond_or_uncond:
        return None
    chunk = batch // len(cond_or_uncond)
    return torch.tensor([c * chunk + r for c, kind in enumerate(cond_or_uncond) if kind != UNCOND for r in range(chunk)],
                        dtype=torch.long)


def latent_tokens(x: torch.Tensor, patch: int) -> tuple[int, int]:
    return (x.shape[-2] + patch // 2) // patch, (x.shape[-1] + patch // 2) // patch


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


class BlockReplacement(ChainedPatch):
    """``patches_replace["dit"]`` entry of one block: AnyStory's streams when active, else the block (or the wrapped patch)."""

    def __init__(self, patch: AnyStoryPatch, kind: str, index: int, base=None):
        self.patch, self.kind, self.index, self.base = patch, kind, index, base
        self.label = f"{kind}_blocks.{index}"

    def rebuilt(self, base) -> BlockReplacement:
        return BlockReplacement(self.patch, self.kind, self.index, base)

    def own_models(self) -> list:
        return [self.patch.lora_patcher]

    def __call__(self, args, extra):
        original = extra["original_block"]
        if self.base is not None:
            return self.base(args, {**extra, "original_block": lambda a: self.run(a, original)})
        return self.run(args, original)

    def run(self, args, original):
        owner_state = args["transformer_options"].get(STATE_KEY)
        if owner_state is None or owner_state[0] is not self.patch:
            return original(args)
        state = owner_state[1]
        block = getattr(state.model, f"{self.kind}_blocks")[self.index]
        if self.kind == "double":
            return self._double(block, args, original, state)
        return self._single(block, args, original, state)

    def _double(self, block, args, original, state: BlockStreams):
        img, txt, vec, pe = args["img"], args["txt"], args["vec"], args["pe"]
        rows = state.rows
        if rows is None:
            img, txt = double_block(block, self.label, img, txt, vec, pe, state)
            return {"img": img, "txt": txt}
        rows = rows.to(img.device)
        plain = _complement(rows, img.shape[0])
        out_img, out_txt = img.clone(), txt.clone()
        text = state.text_tokens
        plain_pe = _without_redux(pe, text, state.redux_tokens)
        done = original({"img": img[plain], "txt": txt[plain, :text], "vec": vec[plain], "pe": _rows(plain_pe, plain),
                         "attn_mask": None, "transformer_options": args["transformer_options"]})
        out_img[plain], out_txt[plain, :text] = done["img"], done["txt"]
        out_img[rows], out_txt[rows] = double_block(block, self.label, img[rows], txt[rows], vec[rows], _rows(pe, rows), state)
        return {"img": out_img, "txt": out_txt}

    def _single(self, block, args, original, state: BlockStreams):
        x, vec, pe = args["img"], args["vec"], args["pe"]
        rows = state.rows
        if rows is None:
            return {"img": single_block(block, self.label, x, vec, pe, state)}
        rows = rows.to(x.device)
        plain = _complement(rows, x.shape[0])
        out = x.clone()
        text, redux = state.text_tokens, state.redux_tokens
        plain_x = torch.cat((x[plain, :text], x[plain, text + redux:]), dim=1)
        done = original({"img": plain_x, "vec": vec[plain], "pe": _rows(_without_redux(pe, text, redux), plain),
                         "attn_mask": None, "transformer_options": args["transformer_options"]})["img"]
        out[plain, :text], out[plain, text + redux:] = done[:, :text], done[:, text:]
        out[rows] = single_block(block, self.label, x[rows], vec[rows], _rows(pe, rows), state)
        return {"img": out}


def _complement(rows: torch.Tensor, batch: int) -> torch.Tensor:
    keep = torch.ones(batch, dtype=torch.bool, device=rows.device)
    keep[rows] = False
    return keep.nonzero().flatten()


def _rows(pe: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return pe if pe.shape[0] == 1 else pe[rows]


def _without_redux(pe: torch.Tensor, text: int, redux: int) -> torch.Tensor:
    return pe if not redux else torch.cat((pe[:, :, :text], pe[:, :, text + redux:]), dim=2)
