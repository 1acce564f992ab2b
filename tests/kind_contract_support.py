"""Per-kind stand-ins for the kind contract suite (tests/test_kind_contract.py).

``CONTRACTS`` maps a registered kind id to a builder of its :class:`KindContract`: a tiny MODEL
of the kind's base model and one of another base, the loaded encoder, two encoded subjects, a
two-box layout and a sampler for that model family. A kind registered without an entry here
fails the suite (never skipped): adding a kind means adding its stand-ins here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

import comfy.sample

from helpers import encode_text, layout, reference_image
from msp_package import pack

nodes = pack("nodes")
base = pack("attention_patches.kinds.base")
registry = pack("attention_patches.kinds.registry")

BOXES = [(0.0, 0.25, 0.5, 0.75), (0.5, 0.25, 1.0, 0.75)]
STEPS = 2


@dataclass
class KindContract:
    """What the contract suite needs of one kind."""

    model: Any  # a MODEL of the kind's base model
    wrong_model: Any  # a MODEL of another base model: Apply names the kind's base model
    encoder: Any
    subjects: tuple
    sampler: Callable[..., torch.Tensor]  # sampler(model, batch=1, cfg=...) -> latent, a real sampling run
    apply_inputs: dict = field(default_factory=dict)  # Apply inputs the kind needs beyond the common ones (e.g. prompt)
    records: dict | None = None  # Apply inputs under which the kind's routes are decided while sampling (None: never)
    window_gates_all: bool = True  # outside start/end_percent the kind leaves the model's output exactly unchanged
    layout: Any = field(default_factory=lambda: layout(BOXES, ["dog", "cat"]))


@functools.cache
def tiny_sdxl():
    """One tiny SDXL MODEL for every kind that needs one (as a base or as another base)."""
    import tiny_models

    return tiny_models.tiny_sdxl_model()


@functools.cache
def tiny_sd15():
    import tiny_models

    return tiny_models.tiny_sd15_model()


def unet_sampler(clip, prompt: str, latent_hw=(8, 8)):
    def sampler(model, batch: int = 1, cfg: float = 5.0, seed: int = 0) -> torch.Tensor:
        positive, negative = encode_text(clip, prompt), encode_text(clip, "blurry")
        latent = torch.zeros(batch, 4, *latent_hw)
        noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
        return comfy.sample.sample(model, noise, STEPS, cfg, "euler", "normal", positive, negative, latent, seed=seed,
                                   disable_pbar=True)
    return sampler


def encoded_subjects(encoder, phrases=("dog", "cat"), **inputs) -> tuple:
    """Subjects through the Encode Reference node, encoded there by ``encoder``."""
    subjects = None
    for i, phrase in enumerate(phrases):
        subjects = nodes.EncodeReference.execute(image=reference_image(i), phrase=phrase, subjects=subjects,
                                                 subject_encoder=encoder, **inputs).args[0]
    return subjects


def ms_diffusion(folder: Path) -> KindContract:
    import tiny_models

    clip, vision = tiny_models.tiny_sdxl_clip(), tiny_models.tiny_clip_vision()
    encoder = registry.load_subject_encoder(tiny_models.save_subject_encoder(folder / "tiny_ms_adapter.safetensors"))
    prompt = "a dog and a cat"
    return KindContract(
        model=tiny_sdxl(), wrong_model=tiny_sd15(), encoder=encoder,
        subjects=encoded_subjects(encoder, clip_vision=vision, clip=clip), sampler=unet_sampler(clip, prompt),
        records={"auto_routing": True, "prompt": prompt, "start_step": 1},
    )


def ssr_encoder(folder: Path) -> KindContract:
    import tiny_sd15

    clip, vision = tiny_sd15.tiny_sd15_clip(), tiny_sd15.tiny_vit_l()
    aligner, _ = tiny_sd15.save_ssr_files(folder, tiny_sd15.ssr_manifest(), "community")
    encoder = registry.load_subject_encoder(aligner)
    prompt = "a dog and a cat"
    return KindContract(
        model=tiny_sd15.tiny_sd15_unet(), wrong_model=tiny_sdxl(), encoder=encoder,
        subjects=encoded_subjects(encoder, clip_vision=vision, clip=clip), sampler=unet_sampler(clip, prompt),
        records={"auto_routing": True, "prompt": prompt, "start_step": 1},
    )


def fastcomposer(folder: Path) -> KindContract:
    import tiny_sd15_fastcomposer

    unet, clip = tiny_sd15(), tiny_sd15_fastcomposer.tiny_sd15_clip()
    encoder = registry.load_subject_encoder(tiny_sd15_fastcomposer.save_fastcomposer(folder / "fastcomposer_encoder.safetensors",
                                                                                     unet=unet))
    prompt = "a man and a woman at the beach"
    return KindContract(
        model=unet, wrong_model=tiny_sdxl(), encoder=encoder,
        subjects=encoded_subjects(encoder, phrases=("man", "woman"), clip=clip), sampler=unet_sampler(clip, prompt),
        apply_inputs={"prompt": prompt}, layout=layout(BOXES, ["man", "woman"]),
    )


def anystory(folder: Path) -> KindContract:
    import anystory_tiny

    encoder_mod = pack("attention_patches.kinds.anystory.encoder")
    checkpoint = pack("models.anystory.checkpoint")
    weights = checkpoint.build_weights(pack("models.safe_load").flatten(anystory_tiny.tiny_anystory()), "t")
    encoder = encoder_mod.AnyStoryEncoder("tiny_anystory.bin", weights)
    subjects = tuple(encoder.with_encoding(base.Reference(phrase, torch.zeros(1, 8, 8, 3)), encoding)
                     for phrase, encoding in zip(("dog", "cat"), anystory_tiny.tiny_encodings(2)))

    def sampler(model, batch: int = 1, cfg: float = 2.0, seed: int = 0) -> torch.Tensor:
        latent = torch.zeros(batch, anystory_tiny.LATENT_CHANNELS, 8, 8)
        noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
        return comfy.sample.sample(model, noise, STEPS, cfg, "euler", "simple", anystory_tiny.flux_conditioning(1),
                                   anystory_tiny.flux_conditioning(2), latent, seed=seed, disable_pbar=True)

    return KindContract(
        model=anystory_tiny.tiny_flux_model(), wrong_model=tiny_sdxl(), encoder=encoder,
        subjects=subjects, sampler=sampler, records={},  # its router decides the routes: recorded without auto routing
        window_gates_all=False,  # start/end_percent is the reference stream's window; the redux tokens act throughout
    )


def lamic(folder: Path) -> KindContract:
    import anystory_tiny

    encoder = registry.builtin_kinds()["LAMIC (no weights file)"].builtin()
    subjects = encoded_subjects(encoder, description="sitting")
    generator = torch.Generator().manual_seed(7)
    references = [torch.randn(1, anystory_tiny.LATENT_CHANNELS, 4, 4, generator=generator) for _ in range(2)]

    def conditioning(seed):  # a Kontext conditioning: 512 T5 tokens and core ReferenceLatent's references
        generator = torch.Generator().manual_seed(seed)
        return [[torch.randn(1, 512, anystory_tiny.TXT_DIM, generator=generator),
                 {"pooled_output": torch.randn(1, anystory_tiny.POOLED_DIM, generator=generator), "guidance": 2.5,
                  "reference_latents": references}]]

    def sampler(model, batch: int = 1, cfg: float = 2.0, seed: int = 0) -> torch.Tensor:
        latent = torch.zeros(batch, anystory_tiny.LATENT_CHANNELS, 8, 8)
        noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
        return comfy.sample.sample(model, noise, STEPS, cfg, "euler", "simple", conditioning(1), conditioning(2), latent,
                                   seed=seed, disable_pbar=True)

    return KindContract(
        model=anystory_tiny.tiny_flux_model(), wrong_model=tiny_sdxl(), encoder=encoder, subjects=subjects, sampler=sampler,
        apply_inputs={"prompt": "dog,sitting.cat,sitting.on a lawn"},
        records={},  # where each reference's attention went is measured while sampling, when the preview asks
    )


CONTRACTS: dict[str, Callable[[Path], KindContract]] = {
    "ms_diffusion_sdxl": ms_diffusion,
    "ssr_encoder_sd15": ssr_encoder,
    "fastcomposer_sd15": fastcomposer,
    "anystory_flux": anystory,
    "lamic": lamic,
}
