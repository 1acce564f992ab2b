"""The AnyStory kind: anystory_flux.bin + Redux + SigLIP + the FLUX VAE, applied to a FLUX.1-dev MODEL.

Settings map onto Apply's inputs: ``scale`` is the redux scale (0.6, the official default),
``subject_scales`` multiply it per subject, ``start_percent``/``end_percent`` are the ref
window (official 0.0/1.0; the multi-subject demo starts at 0.09). The router runs with two or
more subjects (the demo's rule). A layout is optional: with one, each subject may only be
routed inside its box (router AND box).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch

import comfy.model_management as mm
import comfy.model_patcher

from ....models.anystory import reference as ref_inputs
from ....models.anystory.checkpoint import AnyStoryLoRAs, AnyStoryWeights, load_weights, recognises
from ....models.anystory.embedder import REDUX_GRID, ROUTER_GRID, GatedPoolingEmbedder, embedder_state
from ....models.safe_load import read_keys, read_tensors
from ..base import ApplySettings, Capabilities, Reference, SubjectEncoder, SubjectSetupError, encodings_of
from .gating import Gating
from .patch import AnyStoryPatch, AnyStorySettings, SubjectTokens

log = logging.getLogger("comfyui_multisubject.anystory")

REDUX_FOLDER = "style_models"
REDUX_KEYS = ("redux_up.weight", "redux_up.bias", "redux_down.weight", "redux_down.bias")
REDUX_HINT = ("AnyStory builds on FLUX.1 Redux: put flux1-redux-dev.safetensors (black-forest-labs/FLUX.1-Redux-dev or "
              "Comfy-Org/Flux-1-Redux-Dev) in models/style_models, or connect Load Style Model to Load Subject Encoder")


@dataclass(frozen=True, eq=False)
class AnyStoryEncoding:
    redux: torch.Tensor  # [81, T5 dim]
    router: torch.Tensor  # [9, T5 dim]
    ref_latents: torch.Tensor  # [Tr, packed latent channels]
    ref_mask: torch.Tensor  # [Tr]


def redux_state_of(style_model) -> dict[str, torch.Tensor]:
    """Redux's up/down weights from a STYLE_MODEL (core's Load Style Model), or a named error."""
    module = getattr(style_model, "model", None)
    state = module.state_dict() if isinstance(module, torch.nn.Module) else {}
    if not all(k in state for k in REDUX_KEYS):
        raise SubjectSetupError(f"the style model is not FLUX.1 Redux (no redux_up/redux_down); {REDUX_HINT}")
    return {k: state[k] for k in REDUX_KEYS}


def find_redux_file() -> Path | None:
    """A Redux style model in ComfyUI's style_models folders (names with 'redux' first)."""
    import folder_paths

    names = sorted(folder_paths.get_filename_list(REDUX_FOLDER), key=lambda n: "redux" not in n.lower())
    for name in names[:64]:
        path = folder_paths.get_full_path(REDUX_FOLDER, name)
        try:
            if path and all(k in read_keys(path) for k in REDUX_KEYS):
                return Path(path)
        except ValueError:
            continue
    return None


def check_siglip(clip_vision, feature_dim: int) -> None:
    model = getattr(getattr(clip_vision, "model", None), "vision_model", None)
    if (not getattr(clip_vision, "return_all_hidden_states", False) or getattr(clip_vision, "image_size", 0) != ref_inputs.SIGLIP_SIZE
            or not getattr(model, "output_layernorm", False)
            or model.post_layernorm.weight.shape[0] != feature_dim):
        raise SubjectSetupError("AnyStory needs the SigLIP vision model FLUX Redux uses (sigclip_vision_patch14_384.safetensors "
                                "from Comfy-Org/sigclip_vision_384, loaded with Load CLIP Vision); this CLIP-Vision model is another one")


def siglip_features(clip_vision, image: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """SigLIP's last hidden state [1, 729, D] of the masked subject and its token mask [1, 729, 1]."""
    pixels, tokens = ref_inputs.siglip_input(image, mask, clip_vision.image_mean, clip_vision.image_std)
    mm.load_model_gpu(clip_vision.patcher)
    out = clip_vision.model(pixel_values=pixels.to(clip_vision.load_device), intermediate_output=-2)
    return out[0].float().to(mm.intermediate_device()), tokens


def reference_latent(vae, image: torch.Tensor, mask: torch.Tensor | None, size: int = ref_inputs.REF_SIZE):
    """Packed reference latent [1, Tr, C*4] (FLUX's shift and scale) and its [1, Tr, 1] mask."""
    pixels, resized = ref_inputs.reference_pixels(image, mask, size)
    latent = vae.encode(pixels)
    return ref_inputs.pack_latent(latent.float().cpu()), ref_inputs.reference_mask(resized, size)


class AnyStoryEncoder(SubjectEncoder):
    kind = "anystory_flux"
    title = "AnyStory (FLUX.1-dev)"
    base_model = "FLUX"
    model_folders = ("anystory",)
    where_to_get = ("anystory_flux.bin from Hugging Face Junjie96/AnyStory into models/anystory, plus FLUX.1 Redux "
                    "(flux1-redux-dev.safetensors) in models/style_models and SigLIP (sigclip_vision_patch14_384.safetensors)")
    preview_downscales = (2,)  # one FLUX token per 2x2 latent pixels
    learned_routes = True
    capabilities = Capabilities(
        reference_inputs=frozenset({"clip_vision", "vae", "mask"}),
        required_inputs=frozenset({"clip_vision", "vae"}),
    )

    def __init__(self, name: str, weights: AnyStoryWeights, redux_base: dict[str, torch.Tensor] | None = None,
                 lora_patchers: dict | None = None):
        self.name = name
        self.weights = weights
        self.redux_base = redux_base
        self._embedders: tuple[GatedPoolingEmbedder, GatedPoolingEmbedder] | None = None
        # (load device, offload device) -> the ModelPatcher of the streams' LoRAs, shared by every Apply
        # (and by this encoder with another Redux): one device copy, and one offload copy, per encoder
        self._lora_patchers = lora_patchers if lora_patchers is not None else {}

    @classmethod
    def recognises(cls, keys) -> bool:
        return recognises(keys)

    @classmethod
    def load(cls, path: Path) -> AnyStoryEncoder:
        return cls(Path(path).name, load_weights(path))

    def with_style_model(self, style_model) -> AnyStoryEncoder:
        """The same encoder with Redux's weights taken from a loaded STYLE_MODEL."""
        return AnyStoryEncoder(self.name, self.weights, redux_state_of(style_model), self._lora_patchers)

    def lora_patcher(self, model) -> comfy.model_patcher.ModelPatcher:
        """The streams' LoRAs under a ModelPatcher with ``model``'s devices, so the memory manager owns them."""
        devices = (model.load_device, model.offload_device)
        if devices not in self._lora_patchers:
            self._lora_patchers[devices] = comfy.model_patcher.ModelPatcher(
                AnyStoryLoRAs(self.weights), load_device=devices[0], offload_device=devices[1])
        return self._lora_patchers[devices]

    def embedders(self) -> tuple[GatedPoolingEmbedder, GatedPoolingEmbedder]:
        if self._embedders is None:
            base = self.redux_base
            needs_base = not all(k in self.weights.redux_embedder and k in self.weights.router_embedder for k in REDUX_KEYS)
            if base is None and needs_base:
                path = find_redux_file()
                if path is None:
                    raise SubjectSetupError(f"{self.name} needs the FLUX.1 Redux weights, and none were found. {REDUX_HINT}")
                base = read_tensors(path)[0]
            try:
                self._embedders = (GatedPoolingEmbedder(embedder_state(self.weights.redux_embedder, base), REDUX_GRID).eval(),
                                   GatedPoolingEmbedder(embedder_state(self.weights.router_embedder, base), ROUTER_GRID).eval())
            except KeyError as e:
                raise SubjectSetupError(f"the Redux weights lack {e.args[0]}. {REDUX_HINT}") from None
        return self._embedders

    @torch.no_grad()
    def encode(self, reference: Reference) -> AnyStoryEncoding:
        redux_embedder, router_embedder = self.embedders()
        if reference.clip_vision is None:
            raise SubjectSetupError("AnyStory needs a CLIP-Vision input: SigLIP (sigclip_vision_patch14_384.safetensors)")
        check_siglip(reference.clip_vision, redux_embedder.feature_dim)
        if reference.vae is None:
            raise SubjectSetupError("AnyStory needs the FLUX VAE (ae.safetensors) on Encode Reference's 'vae' input "
                                    "to encode the reference latent")
        if reference.pixels.shape[0] > 1:
            log.info("AnyStory encodes one view per subject; the first of %d views is used", reference.pixels.shape[0])
        image = reference.pixels[0]
        mask = reference.mask[0] if reference.mask is not None else None
        features, tokens = siglip_features(reference.clip_vision, image, mask)
        device = mm.get_torch_device()
        redux = redux_embedder.to(device)(features.to(device), tokens.to(device)).cpu()
        router = router_embedder.to(device)(features.to(device), tokens.to(device)).cpu()
        redux_embedder.to("cpu"), router_embedder.to("cpu")
        latent, ref_mask = reference_latent(reference.vae, image, mask)
        if latent.shape[-1] != self.weights.ref.deltas["img_in"][0].down.shape[1]:
            raise SubjectSetupError(f"the VAE gives {latent.shape[-1] // 4}-channel latents; AnyStory needs the FLUX VAE (ae.safetensors)")
        return AnyStoryEncoding(redux[0], router[0], latent[0], ref_mask[0, :, 0])

    def check_model(self, model) -> object:
        from comfy.ldm.flux.model import Flux

        flux = model.get_model_object("diffusion_model") if hasattr(model, "get_model_object") else None
        if type(flux) is not Flux or flux.params.global_modulation:
            raise SubjectSetupError(f"{self.title} patches a FLUX.1-dev MODEL; this MODEL is "
                                    f"{type(flux).__name__ if flux is not None else type(model).__name__}. Load flux1-dev with Load Diffusion Model")
        if flux.hidden_size != self.weights.hidden_size or (len(flux.double_blocks), len(flux.single_blocks)) != self.weights.blocks():
            raise SubjectSetupError(f"{self.name} was trained for FLUX.1-dev ({self.weights.blocks()[0]} double and "
                                    f"{self.weights.blocks()[1]} single blocks of width {self.weights.hidden_size}); this FLUX MODEL "
                                    f"has {len(flux.double_blocks)} and {len(flux.single_blocks)} of width {flux.hidden_size}")
        return flux

    def apply(self, model, subjects, layout, settings: ApplySettings, recorder=None):
        self.check_model(model)
        if settings.auto_routing:
            raise SubjectSetupError("AnyStory routes every token with its own learned router; turn auto_routing off "
                                    "(Router Mask Preview shows the learned routes)")
        if not subjects:
            raise SubjectSetupError("no subjects: connect Encode Reference")
        boxes = None
        if layout is not None:
            boxes = layout.tensor()
            if boxes.shape[0] != len(subjects):
                raise SubjectSetupError(f"the layout has {boxes.shape[0]} boxes for {len(subjects)} subjects; draw one box per subject")
        scales = settings.subject_scales or (settings.scale,) * len(subjects)
        if len(scales) != len(subjects):
            raise SubjectSetupError(f"subject_scales has {len(scales)} values for {len(subjects)} subjects")
        encodings = encodings_of(self, tuple(subjects))
        tokens = SubjectTokens(
            redux=torch.stack([e.redux * scale for e, scale in zip(encodings, scales)]),
            router=torch.stack([e.router for e in encodings]),
            ref_latents=torch.stack([e.ref_latents for e in encodings]),
            ref_mask=torch.stack([e.ref_mask for e in encodings]),
            ref_ids=ref_inputs.reference_ids(int(encodings[0].ref_latents.shape[0] ** 0.5)),
        )
        gating = replace(Gating(), ref_start=settings.start_percent, ref_end=settings.end_percent, router=len(subjects) > 1)
        patch = AnyStoryPatch(self.lora_patcher(model), tokens, AnyStorySettings(gating=gating, redux_scale=1.0), boxes, recorder)
        patched = model.clone()
        patch.install(patched)
        return patched
