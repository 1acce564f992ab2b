"""The contract every registered kind keeps, run on each kind's tiny stand-ins (tests/kind_contract_support.py).

A new kind in the registry is picked up here automatically; without stand-ins it fails.
"""

from __future__ import annotations

import pytest
import torch

import comfy.ldm.modules.attention as comfy_attention

from kind_contract_support import CONTRACTS
from msp_package import pack

nodes = pack("nodes")
base = pack("attention_patches.kinds.base")
registry = pack("attention_patches.kinds.registry")

KIND_IDS = [kind.kind for kind in registry.KINDS]
EVERY_SIGMA = {"sigma_start": 1e9, "sigma_end": 0.0}


def test_every_registered_kind_has_contract_stand_ins():
    missing = sorted(set(KIND_IDS) - set(CONTRACTS))
    assert not missing, f"kinds without stand-ins in tests/kind_contract_support.py CONTRACTS: {missing}"


@pytest.fixture(scope="module", params=KIND_IDS)
def contract(request, tmp_path_factory):
    build = CONTRACTS.get(request.param)
    if build is None:
        pytest.fail(f"kind {request.param} has no stand-ins: add a builder to CONTRACTS in tests/kind_contract_support.py")
    built = build(tmp_path_factory.mktemp(request.param))
    built.before = snapshot(built.model)
    built.plain = built.sampler(built.model)
    built.patched = apply(built)[0]
    built.patched_out = built.sampler(built.patched)
    return built


def apply(contract, **inputs):
    args = dict(model=contract.model, subject_encoder=contract.encoder, subjects=contract.subjects, layout=contract.layout,
                scale=0.6, start_percent=0.0, end_percent=1.0, drop_grounding=False, **contract.apply_inputs)
    args.update(inputs)
    return nodes.ApplyMultiSubjectAttention.execute(**args).args


def replaced(model) -> dict:
    """{(category, key): patch} of the model's replace patches (attn2, dit blocks, ...)."""
    patches = model.model_options.get("transformer_options", {}).get("patches_replace", {})
    return {(category, key): patch for category, entries in patches.items() for key, patch in entries.items()}


def snapshot(model) -> tuple:
    """What a Apply must leave as it was on the incoming MODEL: its options (patch objects by identity) and weights."""
    options = model.model_options
    transformer = options.get("transformer_options", {})
    weights = sum(float(p.detach().double().sum()) for p in model.get_model_object("diffusion_model").parameters())
    return (sorted(options), sorted(transformer), {k: id(v) for k, v in replaced(model).items()},
            {k: len(v) for k, v in getattr(model, "wrappers", {}).items()}, weights)


def test_the_incoming_model_is_never_changed(contract):
    """Neither by Apply nor by sampling the patched clone (the fixture did both)."""
    patched = replaced(contract.patched) or contract.patched.wrappers  # replace patches, or wrappers (a DiT mask kind)
    assert contract.patched is not contract.model and patched, "Apply returns a patched clone"
    assert snapshot(contract.model) == contract.before
    assert torch.equal(contract.sampler(contract.model), contract.plain)
    assert not torch.allclose(contract.patched_out, contract.plain), "the subjects act on the patched clone"


class ForeignAttn2:
    """Another pack's attn2 replace patch: ComfyUI's attention, counted."""

    def __init__(self):
        self.calls = 0

    def __call__(self, q, k, v, extra_options):
        self.calls += 1
        return comfy_attention.optimized_attention(q, k, v, extra_options["n_heads"], transformer_options=extra_options)

    def __deepcopy__(self, memo):
        return self  # counted across clones


class ForeignBlock:
    """Another pack's block replacement (DiT): the original block, counted."""

    def __init__(self):
        self.calls = 0

    def __call__(self, args, extra):
        self.calls += 1
        return extra["original_block"](args)

    def __deepcopy__(self, memo):
        return self


def test_patches_already_installed_on_the_same_keys_are_called_not_replaced(contract):
    theirs = contract.model.clone()
    foreign = {}
    for category, key in replaced(contract.patched):
        foreign[category, key] = ForeignAttn2() if category == "attn2" else ForeignBlock()
        theirs.set_model_patch_replace(foreign[category, key], category, *key)
    both = apply(contract, model=theirs)[0]
    out = contract.sampler(both)
    assert torch.isfinite(out).all()
    uncalled = [key for key, patch in foreign.items() if patch.calls == 0]
    assert not uncalled, f"patches installed before the kind were never called: {uncalled[:4]}"
    assert not torch.allclose(out, contract.plain), "the kind acts on top of the other pack's patches (which compute the plain model)"


class Callback:
    """An IPAdapter-family callback: adds to the attention output and counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, out, q, k, v, extra_options, **kwargs):
        self.calls += 1
        return 0.1 * torch.tanh(q)

    def __deepcopy__(self, memo):
        return self


def test_the_ipadapter_family_add_protocol_chains_on_the_kinds_cross_attention_patches(contract):
    theirs = contract.patched.clone()
    attn2 = {key: patch for (category, key), patch in replaced(theirs).items() if category == "attn2"}
    if not attn2:  # a DiT kind: the protocol is the UNet cross-attention's; there is none to patch
        assert not any("attn2" in name for name, _ in contract.model.get_model_object("diffusion_model").named_modules())
        return
    callback = Callback()
    for key, patch in attn2.items():  # what those packs do when a key holds a patch: .add on it
        patch.add(callback, weight=0.1, module_key=key, **EVERY_SIGMA)
    out = contract.sampler(theirs)
    assert callback.calls > 0 and torch.isfinite(out).all()
    assert not torch.allclose(out, contract.patched_out)
    assert all(not getattr(p, "callbacks", []) for (c, _), p in replaced(contract.patched).items() if c == "attn2"), \
        ".add on a clone's patch never reaches the model it was cloned from"


def test_an_attention_override_already_installed_is_called_not_replaced(contract):
    calls = []

    def override(func, *args, **kwargs):
        calls.append(1)
        return func(*args, **kwargs)

    theirs = contract.model.clone()
    theirs.model_options["transformer_options"]["optimized_attention_override"] = override
    contract.sampler(theirs)
    plain_calls, calls[:] = len(calls), []
    both = apply(contract, model=theirs)[0]
    assert both.model_options["transformer_options"]["optimized_attention_override"] is override
    contract.sampler(both)
    assert plain_calls > 0 and len(calls) >= plain_calls, f"the override saw {len(calls)} of the model's {plain_calls} attentions"


def test_a_model_of_another_base_is_a_named_error(contract):
    with pytest.raises(base.SubjectSetupError) as error:
        apply(contract, model=contract.wrong_model)
    message = str(error.value)
    assert message.startswith("Apply Multi-Subject Attention: ") and contract.encoder.base_model in message, message


def test_routes_are_recorded_where_the_kind_decides_them_and_only_when_asked(contract):
    if contract.records is None:  # box routes only: known without sampling
        assert apply(contract, record_routes=True)[1].recorder is None
        return
    model, routes = apply(contract, record_routes=True, **contract.records)
    contract.sampler(model)
    assert routes.recorder is not None and routes.recorder.steps, "the routes decided while sampling are recorded"
    assert apply(contract, record_routes=False, **contract.records)[1].recorder is None


def test_batch_rows_are_independent_and_every_cfg_setting_runs(contract):
    two = contract.sampler(contract.patched, batch=2)
    assert two.shape[0] == 2 and torch.allclose(two[:1], contract.patched_out, atol=1e-4)
    assert torch.isfinite(contract.sampler(contract.patched, cfg=1.0)).all()  # positive rows only, no negative pass


def test_start_and_end_percent_bound_where_the_kind_acts(contract):
    closed = contract.sampler(apply(contract, start_percent=0.9, end_percent=0.95)[0])  # no sampling step in the window
    if contract.window_gates_all:
        assert torch.equal(closed, contract.plain)
    else:
        assert not torch.allclose(closed, contract.patched_out)
