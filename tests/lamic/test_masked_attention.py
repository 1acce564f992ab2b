"""The class-restricted joint attention equals the dense additive-mask path on every ComfyUI backend."""

from __future__ import annotations

import pytest
import torch

import comfy.ldm.modules.attention as comfy_attention

from devkit.pack import pack

masked = pack("attention_patches.dit.masked_attention")
BACKENDS = ("attention_pytorch", "attention_sub_quad", "attention_split", "attention_basic")
EXACT = 1e-5


def random_classes(tokens: int = 96, classes: int = 6, soft: bool = False, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, classes, (tokens,), generator=generator)
    allowed = torch.rand(classes, classes, generator=generator) > 0.4
    allowed |= torch.eye(classes, dtype=torch.bool)  # every row allows at least its own class
    if not soft:
        return masked.TokenClasses(ids, allowed)
    bias = torch.where(allowed, torch.zeros(()), torch.log1p(-torch.rand(classes, classes, generator=generator) * 0.9))
    bias[0, 1] = float("-inf")
    return masked.TokenClasses(ids, bias)


def qkv(tokens: int, heads: int = 2, dim: int = 8, batch: int = 2, seed: int = 1):
    return torch.randn(3, batch, heads, tokens, dim, generator=torch.Generator().manual_seed(seed)).unbind(0)


def plain(func, *args, **kwargs):
    return func(*args, **kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("soft", (False, True))
def test_equals_dense_path(backend, soft):
    func = getattr(comfy_attention, backend).__wrapped__
    classes = random_classes(soft=soft)
    q, k, v = qkv(classes.tokens)
    dense = masked.dense_attention(func, q, k, v, 2, classes, skip_reshape=True)
    grouped = masked.masked_attention(plain, func, q, k, v, 2, classes, kwargs={"skip_reshape": True})
    assert (grouped - dense).abs().max() <= EXACT
    if not soft:  # the restriction acts: the unmasked attention differs
        assert (func(q, k, v, 2, skip_reshape=True) - dense).abs().max() > 1e-3


def test_flat_layout_positional_mask_and_incoming_mask():
    """[B, S, H*D] inputs (Qwen-Image's call) with the mask as the 5th positional argument, combined with ours."""
    classes = random_classes(tokens=40, classes=4)
    q, k, v = (t.transpose(1, 2).flatten(2) for t in qkv(classes.tokens))
    incoming = torch.zeros(classes.tokens, classes.tokens)
    incoming[:, :3] = float("-inf")
    func = comfy_attention.attention_pytorch.__wrapped__
    override = masked.MaskedAttention()
    options = {masked.CLASSES_KEY: classes}
    out = override(func, q, k, v, 2, incoming, None, transformer_options=options)  # mask and attn_precision positional
    combined = classes.dense_mask() + incoming
    assert (out - func(q, k, v, 2, mask=combined)).abs().max() <= EXACT


def test_foreign_override_is_called_and_kept():
    """An override already installed is wrapped (called for every group), never replaced; clones share nothing mutable."""
    import copy

    calls = []

    def foreign(func, *args, **kwargs):
        calls.append(args[0].shape)
        return func(*args, **kwargs)

    class Model:
        model_options = {"transformer_options": {"optimized_attention_override": foreign}}

    model = Model()
    override = masked.install(model)
    assert model.model_options["transformer_options"]["optimized_attention_override"] is override and override.base is foreign
    assert masked.install(model) is override  # a second install does not stack
    assert copy.deepcopy(override) is override
    classes = random_classes()
    q, k, v = qkv(classes.tokens)
    func = comfy_attention.attention_sub_quad.__wrapped__
    out = override(func, q, k, v, 2, skip_reshape=True, transformer_options={masked.CLASSES_KEY: classes})
    assert len(calls) == len(classes.plan("cpu")) > 1
    assert (out - masked.dense_attention(func, q, k, v, 2, classes, skip_reshape=True)).abs().max() <= EXACT
    calls.clear()
    override(func, q[:, :, :10], k[:, :, :10], v[:, :, :10], 2, skip_reshape=True, transformer_options={masked.CLASSES_KEY: classes})
    assert len(calls) == 1  # another sequence (not this call's layout): passed through unmasked


def test_structure_is_small():
    """The mask structure of FLUX.2 with 4 references at 1 MP: class ids, table and query groups, no [S, S]."""
    tokens = 512 + 4096 * 5
    ids = torch.randint(0, 12, (tokens,), generator=torch.Generator().manual_seed(0))
    classes = masked.TokenClasses(ids, torch.rand(12, 12, generator=torch.Generator().manual_seed(1)) > 0.3)
    assert masked.structure_bytes(classes) <= 64 * 2 ** 20


def test_attention_share_in_bounded_query_chunks_equals_one_chunk(monkeypatch):
    """The preview's measurement splits the queries by a byte budget (real sizes would need GiB of scores at once)."""
    share = pack("attention_patches.dit.attention_share")
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 4, (40,), generator=g)
    classes = masked.TokenClasses(ids, (torch.rand(4, 4, generator=g) > 0.3) | torch.eye(4, dtype=torch.bool))
    q, k = torch.randn(2, 2, 40, 8, generator=g), torch.randn(2, 2, 40, 8, generator=g)
    whole = share.reference_attention(q, k, classes, (8, 24), ((24, 32), (32, 40)))
    monkeypatch.setattr(share, "SCORES_BUDGET", 4 * 2 * 2 * 40 * 3)  # three queries per chunk
    chunked = share.reference_attention(q, k, classes, (8, 24), ((24, 32), (32, 40)))
    assert whole.shape == (2, 16)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)
