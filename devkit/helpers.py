"""Small helpers for the in-process tests: conditioning, sampling, node calls, attention spies."""

from __future__ import annotations

import torch

import comfy.ldm.modules.attention as comfy_attention
import comfy.sample

from .pack import pack

nodes = pack("nodes")
patch_mod = pack("attention_patches.patch")


GOLDEN_TOLERANCE = 1e-4  # max abs error against an official golden, fp32


def assert_close(actual, expected, what: str = "", *, tolerance: float = GOLDEN_TOLERANCE) -> None:
    """Golden parity: the largest absolute difference is within ``tolerance``."""
    error = (actual.float() - expected.float()).abs().max().item()
    assert error <= tolerance, f"{what + ': ' if what else ''}max abs error {error:.3g} > {tolerance}"


def encode_text(clip, text: str, width: int = 1024, height: int = 1024):
    cond = clip.encode_from_tokens_scheduled(clip.tokenize(text))
    for _, extra in cond:
        extra.update({"width": width, "height": height, "crop_w": 0, "crop_h": 0, "target_width": width, "target_height": height})
    return cond


def sample(model, clip, latent_hw=(16, 24), steps=3, cfg=5.0, sampler="euler", scheduler="normal", seed=0,
           prompt="a dog and a cat", negative="blurry", callback=None, latent=None):
    h, w = latent_hw
    positive, negative_cond = encode_text(clip, prompt), encode_text(clip, negative)
    latent = torch.zeros(1, 4, h, w) if latent is None else latent
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    return comfy.sample.sample(model, noise, steps, cfg, sampler, scheduler, positive, negative_cond, latent,
                               seed=seed, callback=callback, disable_pbar=True)


def reference_image(seed: int, views: int = 1, size=(64, 48), channels: int = 3) -> torch.Tensor:
    return torch.rand(views, size[0], size[1], channels, generator=torch.Generator().manual_seed(seed))


def encode_subjects(vision, clip, phrases, seeds=None, **kwargs):
    """The Encode Reference node, chained once per phrase."""
    subjects = None
    for i, phrase in enumerate(phrases):
        seed = seeds[i] if seeds else i
        out = nodes.EncodeReference.execute(clip_vision=vision, clip=clip, image=reference_image(seed), phrase=phrase,
                                            subjects=subjects, **kwargs)
        subjects = out.args[0]
    return subjects


def layout(boxes, labels=None, width=1024, height=1024):
    import json

    items = [{"x1": b[0], "y1": b[1], "x2": b[2], "y2": b[3], "label": (labels or [""] * len(boxes))[i]} for i, b in enumerate(boxes)]
    return nodes.DrawLayoutBox.execute(boxes=json.dumps(items), width=width, height=height, preset="custom").args[0]


def apply(model, encoder, subjects, layout_, scale=0.6, **kwargs):
    args = dict(model=model, subject_encoder=encoder, subjects=subjects, layout=layout_, scale=scale,
                start_percent=0.0, end_percent=1.0, drop_grounding=False)
    args.update(kwargs)
    return nodes.ApplyMultiSubjectAttention.execute(**args).args


class AttentionSpy:
    """Wraps every attn2 patch of a model to record its calls (key, inputs, output)."""

    def __init__(self, model):
        self.calls = []
        attn2 = model.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {})
        for key, patch in list(attn2.items()):
            model.set_model_attn2_replace(self._wrap(key, patch), *key)

    def _wrap(self, key, patch):
        def spy(q, k, v, extra_options):
            out = patch(q, k, v, extra_options)
            self.calls.append({"key": key, "q": q.clone(), "k": k.clone(), "v": v.clone(), "out": out.clone(),
                               "options": dict(extra_options)})
            return out
        return spy


def plain_attention(q, k, v, options):
    return comfy_attention.optimized_attention(q, k, v, options["n_heads"])
