"""The kind lifecycle (attention_patches/lifecycle.py), for every registered kind through a real sampling run:
ComfyUI's ON_PRE_RUN / ON_CLEANUP callbacks start each per-run owner and free everything it cached, also when a run fails.

Each kind runs on its tiny stand-ins of the contract suite (tests/kind_contract_support.py CONTRACTS)."""

import pytest

import comfy.patcher_extension

from devkit.pack import pack
from kind_contract_support import CONTRACTS

nodes = pack("nodes")
registry = pack("attention_patches.kinds.registry")
lifecycle = pack("attention_patches.lifecycle")


def applied(contract):
    args = dict(model=contract.model, subject_encoder=contract.encoder, subjects=contract.subjects, layout=contract.layout,
                scale=0.6, start_percent=0.0, end_percent=1.0, drop_grounding=False, **contract.apply_inputs)
    return nodes.ApplyMultiSubjectAttention.execute(**args).args[0]


def held(model) -> int:
    return sum(owner.held_caches() for owner in lifecycle.run_scoped_of(model))


class CacheWatch:
    """DIFFUSION_MODEL wrapper: how much the owners held after each model call; raises at call ``fail_at`` if given."""

    def __init__(self, model, fail_at=None):
        self.model, self.fail_at, self.seen = model, fail_at, []

    def __call__(self, executor, *args, **kwargs):
        out = executor(*args, **kwargs)
        self.seen.append(held(self.model))
        if self.fail_at is not None and len(self.seen) >= self.fail_at:
            raise RuntimeError("a node failed mid-run")
        return out


def watched(patched, fail_at=None):
    model = patched.clone()
    watch = CacheWatch(model, fail_at)
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test", watch)
    return model, watch


@pytest.mark.parametrize("kind", registry.KINDS, ids=lambda kind: kind.kind)
def test_every_per_run_cache_is_freed_by_comfys_cleanup_callbacks(kind, tmp_path):
    if kind.kind not in CONTRACTS:
        pytest.fail(f"kind {kind.kind} has no stand-ins: add a builder to CONTRACTS in tests/kind_contract_support.py")
    contract = CONTRACTS[kind.kind](tmp_path)
    patched = applied(contract)
    assert lifecycle.run_scoped_of(patched), "the kind registers its per-run state with the lifecycle"
    model, watch = watched(patched)
    contract.sampler(model)
    assert max(watch.seen) > 0, "the run cached something"
    assert held(model) == 0
    model, watch = watched(patched, fail_at=2)
    with pytest.raises(RuntimeError, match="mid-run"):
        contract.sampler(model)
    assert max(watch.seen) > 0 and held(model) == 0
