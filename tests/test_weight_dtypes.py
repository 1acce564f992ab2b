"""Every kind's files and every partner model in the dtypes released weights come in, through the real sampler.

Each case loads the tiny stand-in file re-saved in fp32 / fp16 / bf16 / fp8 (e4m3fn), encodes
the references through Encode Reference, applies and samples a few steps on the device ComfyUI
picks; the result must be finite and close to the fp32 files' result (the low-precision
weights are the fp32 ones rounded, so only rounding may differ).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import comfy.ldm.flux.redux
import comfy.model_management as mm
import comfy.sample
import comfy.sd

import anystory_tiny as tiny_flux
from helpers import encode_text, layout, reference_image
from msp_package import pack
from tiny_models import save_subject_encoder, tiny_clip_vision, tiny_sdxl_clip, tiny_sdxl_model
from tiny_sd15 import save_ssr_files, ssr_manifest, tiny_sd15_clip, tiny_sd15_unet, tiny_vit_l
from tiny_sd15_fastcomposer import save_fastcomposer, tiny_sd15_clip as fastcomposer_clip
from tiny_models import tiny_sd15_model  # noqa: I001 (FastComposer's stand-in UNet)

nodes = pack("nodes")
registry = pack("attention_patches.kinds.registry")
safe_load = pack("models.safe_load")

FP8 = torch.float8_e4m3fn
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp8": FP8}
# max |difference| from the fp32 files' latent after the steps: rounding of the weights only (fp8 keeps 3 mantissa bits)
TOLERANCE = {"fp32": 0.0, "fp16": 0.02, "bf16": 0.1, "fp8": 0.5}
STEPS = 2
BOXES = [(0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)]


def resaved(path: Path, dtype: torch.dtype, folder: Path) -> Path:
    """``path``'s tensors with every floating tensor cast to ``dtype``, written in the same format under ``folder``."""
    from safetensors.torch import save_file

    flat, metadata = safe_load.read_tensors(path)
    cast = {k: v.to(dtype) if v.is_floating_point() else v for k, v in flat.items()}
    out = folder / path.name
    folder.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".safetensors":
        save_file(cast, str(out), metadata=metadata or None)
    else:
        torch.save(cast, str(out))
    return out


def stored_in(model, dtype: torch.dtype):
    """A partner model (CLIP-Vision, SigLIP) whose weights are stored in ``dtype``, as ComfyUI keeps them
    (``--fp8_e4m3fn-text-enc`` and friends); its manual-cast layers compute in the inputs' dtype."""
    model.model.to(dtype)
    model.dtype = dtype
    return model


def chained(encoder, references: list[dict]):
    subjects = None
    for ref in references:
        subjects = nodes.EncodeReference.execute(subjects=subjects, subject_encoder=encoder, **ref).args[0]
    return subjects


def applied(model, encoder, subjects, layout_=None, prompt="", **kwargs):
    return nodes.ApplyMultiSubjectAttention.execute(model=model, subject_encoder=encoder, subjects=subjects, layout=layout_,
                                                   scale=0.6, start_percent=0.0, end_percent=1.0, drop_grounding=False,
                                                   prompt=prompt, **kwargs).args[0]


def sampled(model, positive, negative, latent):
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    return comfy.sample.sample(model, noise, STEPS, 4.0, "euler", "normal", positive, negative, latent, seed=0,
                               disable_pbar=True)


def check(out: torch.Tensor, reference: torch.Tensor, plain: torch.Tensor, dtype_name: str) -> None:
    assert torch.isfinite(out).all()
    assert not torch.equal(reference, plain)  # the subjects change the image in fp32
    difference = (out - reference).abs().max().item()
    assert difference <= TOLERANCE[dtype_name], f"{dtype_name}: {difference}"


class KindRun:
    """One kind's tiny stand-ins and its fp32 result; ``run(file dtype, partner dtype)`` samples with others."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self._reference = None
        self._encoders = {}

    def encoder(self, file: Path, file_dtype: str):
        """The kind's file re-saved in ``file_dtype`` and loaded as Load Subject Encoder does (once per dtype)."""
        if file_dtype not in self._encoders:
            self._encoders[file_dtype] = registry.load_subject_encoder(resaved(file, DTYPES[file_dtype], self.tmp / file_dtype))
        return self._encoders[file_dtype]

    def reference(self):
        if self._reference is None:
            self._reference = self.run("fp32", "fp32")
        return self._reference


class MSDiffusion(KindRun):
    def __init__(self, tmp):
        super().__init__(tmp)
        self.model, self.clip = tiny_sdxl_model(), tiny_sdxl_clip()
        self.file = save_subject_encoder(tmp / "fp32" / "ms_adapter.bin")
        self.cond = encode_text(self.clip, "a dog and a cat"), encode_text(self.clip, "blurry")
        self.plain = sampled(self.model, *self.cond, torch.zeros(1, 4, 16, 16))

    def run(self, file_dtype, partner_dtype):
        encoder = self.encoder(self.file, file_dtype)
        vision = stored_in(tiny_clip_vision(), DTYPES[partner_dtype])
        refs = [dict(clip_vision=vision, clip=self.clip, image=reference_image(i), phrase=p) for i, p in enumerate(("dog", "cat"))]
        patched = applied(self.model, encoder, chained(encoder, refs), layout(BOXES))
        return sampled(patched, *self.cond, torch.zeros(1, 4, 16, 16))


class SSREncoder(KindRun):
    def __init__(self, tmp):
        super().__init__(tmp)
        self.model, self.clip = tiny_sd15_unet(), tiny_sd15_clip()
        self.files = save_ssr_files(tmp / "fp32", ssr_manifest(), "community")
        self.cond = encode_text(self.clip, "a dog and a cat"), encode_text(self.clip, "blurry")
        self.plain = sampled(self.model, *self.cond, torch.zeros(1, 4, 16, 16))

    def run(self, file_dtype, partner_dtype):
        if file_dtype not in self._encoders:
            resaved(self.files[1], DTYPES[file_dtype], self.tmp / file_dtype)  # the partner file, found beside the aligner
        encoder = self.encoder(self.files[0], file_dtype)
        vision = stored_in(tiny_vit_l(), DTYPES[partner_dtype])
        refs = [dict(clip_vision=vision, clip=self.clip, image=reference_image(i), phrase=p) for i, p in enumerate(("dog", "cat"))]
        patched = applied(self.model, encoder, chained(encoder, refs), layout(BOXES))
        return sampled(patched, *self.cond, torch.zeros(1, 4, 16, 16))


class FastComposer(KindRun):
    PROMPT = "a man and a woman"

    def __init__(self, tmp):
        super().__init__(tmp)
        self.model, self.clip = tiny_sd15_model(), fastcomposer_clip()
        self.file = save_fastcomposer(tmp / "fp32" / "fastcomposer_encoder.safetensors", unet=self.model)
        self.cond = encode_text(self.clip, self.PROMPT), encode_text(self.clip, "blurry")
        self.plain = sampled(self.model, *self.cond, torch.zeros(1, 4, 16, 16))

    def run(self, file_dtype, partner_dtype):  # its image encoder is in its own file: no partner model
        encoder = self.encoder(self.file, file_dtype)
        refs = [dict(clip=self.clip, image=reference_image(20 + i), phrase=p) for i, p in enumerate(("man", "woman"))]
        patched = applied(self.model, encoder, chained(encoder, refs), prompt=self.PROMPT)
        return sampled(patched, *self.cond, torch.zeros(1, 4, 16, 16))


class EncodedOnce:
    """The real FLUX VAE stand-in, each reference encoded once: the reference latent depends on no dtype under test,
    and a 512 px encode per case would be most of this module's time."""

    def __init__(self, vae):
        self.vae, self.latents = vae, {}

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        key = hash(pixels.numpy().tobytes())
        if key not in self.latents:
            self.latents[key] = self.vae.encode(pixels)
        return self.latents[key]


class AnyStory(KindRun):
    def __init__(self, tmp):
        super().__init__(tmp)
        self.model = tiny_flux.tiny_flux_model()
        self.vae = EncodedOnce(tiny_flux.tiny_flux_vae())
        self.file = tmp / "fp32" / "anystory_flux.bin"
        self.file.parent.mkdir(parents=True)
        torch.save(tiny_flux.tiny_anystory(base_redux=False), self.file)
        self.cond = tiny_flux.flux_conditioning(1), tiny_flux.flux_conditioning(2)
        self.plain = sampled(self.model, *self.cond, torch.zeros(1, tiny_flux.LATENT_CHANNELS, 8, 8))

    @staticmethod
    def redux(dtype):
        """The Redux style model as Load Style Model holds it, its weights in ``dtype``."""
        module = comfy.ldm.flux.redux.ReduxImageEncoder(redux_dim=tiny_flux.SIGLIP_DIM, txt_in_features=tiny_flux.TXT_DIM, dtype=dtype)
        module.load_state_dict({k: v.to(dtype) for k, v in tiny_flux.tiny_redux_state().items()})
        return comfy.sd.StyleModel(module)

    def references(self, siglip) -> list[dict]:
        mask = torch.zeros(1, 96, 80)
        mask[:, 16:80, 8:72] = 1
        return [dict(clip_vision=siglip, vae=self.vae, image=reference_image(i, size=(96, 80)), mask=mask, phrase=p)
                for i, p in enumerate(("dog", "cat"))]

    def run(self, file_dtype, partner_dtype):
        partner = DTYPES[partner_dtype]
        encoder = self.encoder(self.file, file_dtype).with_style_model(self.redux(partner))
        patched = applied(self.model, encoder, chained(encoder, self.references(stored_in(tiny_flux.tiny_siglip(), partner))))
        return sampled(patched, *self.cond, torch.zeros(1, tiny_flux.LATENT_CHANNELS, 8, 8))


KINDS = {"ms_diffusion": MSDiffusion, "ssr_encoder": SSREncoder, "fastcomposer": FastComposer, "anystory": AnyStory}


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    built = {}

    def get(name):
        if name not in built:
            built[name] = KINDS[name](tmp_path_factory.mktemp(name))
        return built[name]

    yield get
    mm.soft_empty_cache()


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp8"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_a_kinds_file_in_a_released_dtype_samples_like_fp32(kinds, kind, dtype):
    run = kinds(kind)
    check(run.run(dtype, "fp32"), run.reference(), run.plain, dtype)


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp8"])
@pytest.mark.parametrize("kind", ["ms_diffusion", "ssr_encoder", "anystory"])
def test_a_partner_model_in_a_released_dtype_samples_like_fp32(kinds, kind, dtype):
    """CLIP-Vision (MS-Diffusion, SSR-Encoder), SigLIP and the Redux style model (AnyStory) stored in ``dtype``."""
    run = kinds(kind)
    check(run.run("fp32", dtype), run.reference(), run.plain, dtype)


def test_anystory_with_the_redux_file_found_in_style_models_in_half_precision(kinds):
    """The released flux1-redux-dev.safetensors is half precision; found on disk (no style model connected) it is read as is."""
    run = kinds("anystory")
    from safetensors.torch import save_file

    redux_file = run.tmp / "flux1-redux-dev.safetensors"
    save_file({k: v.to(torch.bfloat16) for k, v in tiny_flux.tiny_redux_state().items()}, str(redux_file))
    encoder_mod = pack("attention_patches.kinds.anystory.encoder")
    loaded = run.encoder(run.file, "fp16")
    encoder = encoder_mod.AnyStoryEncoder(loaded.name, loaded.weights, safe_load.read_tensors(redux_file)[0])
    refs = run.references(tiny_flux.tiny_siglip())
    out = sampled(applied(run.model, encoder, chained(encoder, refs)), *run.cond, torch.zeros(1, tiny_flux.LATENT_CHANNELS, 8, 8))
    assert torch.isfinite(out).all() and not torch.equal(out, run.plain)


def test_anystory_converted_by_the_packs_script_to_bf16_samples_like_fp32(kinds):
    """What scripts/convert_anystory.py --dtype bf16 writes (its main, in this process: the script is tested as a
    command in test_converter_scripts)."""
    run = kinds("anystory")
    converted = run.tmp / "converted" / "anystory_flux.safetensors"
    converted.parent.mkdir()
    assert pack("models.anystory.convert").main([str(run.file), str(converted), "--dtype", "bf16"]) == 0
    assert {t.dtype for t in safe_load.read_tensors(converted)[0].values()} == {torch.bfloat16}
    encoder = registry.load_subject_encoder(converted).with_style_model(run.redux(torch.float32))
    out = sampled(applied(run.model, encoder, chained(encoder, run.references(tiny_flux.tiny_siglip()))), *run.cond,
                  torch.zeros(1, tiny_flux.LATENT_CHANNELS, 8, 8))
    check(out, run.reference(), run.plain, "bf16")
