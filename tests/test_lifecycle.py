"""The kind lifecycle (attention_patches/lifecycle.py), for every registered kind through a real sampling run:
ComfyUI's ON_PRE_RUN / ON_CLEANUP callbacks start each per-run owner and free everything it cached, also when a run fails."""

import pytest
import torch

import comfy.patcher_extension
import comfy.sample

from devkit import anystory_tiny as tiny_flux
from devkit.helpers import layout, reference_image, sample
from devkit.pack import pack

base = pack("attention_patches.kinds.base")
registry = pack("attention_patches.kinds.registry")
lifecycle = pack("attention_patches.lifecycle")
checkpoint = pack("models.anystory.checkpoint")
safe_load = pack("models.safe_load")

TWO_BOXES = ((0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0))
PHRASES = ("man", "woman")
PROMPT = "a man and a woman at the beach"


def ms_diffusion(tmp_path):
    from devkit.tiny_models import save_subject_encoder, tiny_clip_vision, tiny_sdxl_clip, tiny_sdxl_model

    clip, vision = tiny_sdxl_clip(), tiny_clip_vision()
    encoder = registry.load_subject_encoder(save_subject_encoder(tmp_path / "ms_adapter.safetensors"))
    subjects = tuple(base.Subject(base.Reference(p, reference_image(i), clip_vision=vision, clip=clip)) for i, p in enumerate(PHRASES))
    patched = encoder.apply(tiny_sdxl_model(), subjects, layout(TWO_BOXES), base.ApplySettings(prompt=PROMPT))
    return patched, lambda model: sample(model, clip, (16, 16), steps=2, prompt=PROMPT)


def ssr_encoder(tmp_path):
    from devkit.tiny_sd15 import save_ssr_files, ssr_manifest, tiny_sd15_clip, tiny_sd15_unet, tiny_vit_l

    clip, vision = tiny_sd15_clip(), tiny_vit_l()
    aligner, _ = save_ssr_files(tmp_path, ssr_manifest(), "community")
    encoder = registry.load_subject_encoder(aligner)
    subjects = tuple(base.Subject(base.Reference(p, reference_image(i), clip_vision=vision, clip=clip)) for i, p in enumerate(PHRASES))
    patched = encoder.apply(tiny_sd15_unet(), subjects, layout(TWO_BOXES), base.ApplySettings(prompt=PROMPT))
    return patched, lambda model: sample(model, clip, (16, 16), steps=2, prompt=PROMPT)


def fastcomposer(tmp_path):
    from devkit.tiny_models import tiny_sd15_model
    from devkit.tiny_sd15_fastcomposer import save_fastcomposer, tiny_sd15_clip

    unet, clip = tiny_sd15_model(), tiny_sd15_clip()
    encoder = registry.load_subject_encoder(save_fastcomposer(tmp_path / "fastcomposer_encoder.safetensors", unet=unet))
    subjects = tuple(base.Subject(base.Reference(p, reference_image(i), clip=clip)) for i, p in enumerate(PHRASES))
    patched = encoder.apply(unet, subjects, layout(TWO_BOXES), base.ApplySettings(prompt=PROMPT, start_percent=0.01))
    return patched, lambda model: sample(model, clip, (16, 16), steps=2, prompt=PROMPT)


def anystory(tmp_path):
    encoder = pack("attention_patches.kinds.anystory.encoder").AnyStoryEncoder(
        "tiny_anystory.bin", checkpoint.build_weights(safe_load.flatten(tiny_flux.tiny_anystory()), "t"))
    subjects = [encoder.with_encoding(base.Reference(f"subject {i}", torch.zeros(1, 8, 8, 3)), encoding)
                for i, encoding in enumerate(tiny_flux.tiny_encodings(2, ref_grid=4))]
    patched = encoder.apply(tiny_flux.tiny_flux_model(), tuple(subjects), None, base.ApplySettings())

    def run(model):
        latent = torch.zeros(1, tiny_flux.LATENT_CHANNELS, 8, 8)
        noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
        return comfy.sample.sample(model, noise, 2, 2.0, "euler", "simple", tiny_flux.flux_conditioning(1),
                                   tiny_flux.flux_conditioning(2), latent, seed=0, disable_pbar=True)
    return patched, run


TINY_SETUPS = {"ms_diffusion_sdxl": ms_diffusion, "ssr_encoder_sd15": ssr_encoder, "fastcomposer_sd15": fastcomposer,
               "anystory_flux": anystory}


def setup_of(kind):
    if kind.kind not in TINY_SETUPS:
        pytest.fail(f"kind {kind.kind!r} has no tiny setup in tests/test_lifecycle.py: add one (a patched tiny model and a sampling run)")
    return TINY_SETUPS[kind.kind]


def held(model) -> int:
    return sum(owner.held_caches() for owner in lifecycle.run_scoped_of(model))


class CacheWatch:
    """DIFFUSION_MODEL wrapper: how much the owners held after each model call; raises at call ``fail_at`` if given."""

    def __init__(self, owners_of, fail_at=None):
        self.owners_of, self.fail_at, self.seen = owners_of, fail_at, []

    def __call__(self, executor, *args, **kwargs):
        out = executor(*args, **kwargs)
        self.seen.append(self.owners_of())
        if self.fail_at is not None and len(self.seen) >= self.fail_at:
            raise RuntimeError("a node failed mid-run")
        return out


@pytest.mark.parametrize("kind", registry.KINDS, ids=lambda kind: kind.kind)
def test_every_per_run_cache_is_freed_by_comfys_cleanup_callbacks(kind, tmp_path):
    patched, run = setup_of(kind)(tmp_path)
    owners = lifecycle.run_scoped_of(patched)
    assert owners, "the kind registers its per-run state with the lifecycle"
    watched = patched.clone()
    watch = CacheWatch(lambda: held(watched))
    watched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test", watch)
    run(watched)
    assert max(watch.seen) > 0, "the run cached something"
    assert held(watched) == 0
    failing = patched.clone()
    watch = CacheWatch(lambda: held(failing), fail_at=2)
    failing.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test", watch)
    with pytest.raises(RuntimeError, match="mid-run"):
        run(failing)
    assert max(watch.seen) > 0 and held(failing) == 0
