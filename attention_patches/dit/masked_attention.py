"""Joint attention restricted by token classes, without ever building a dense [S, S] mask.

A restriction is a per-token class id [S] and a small class table [C, C]: bool (True = the query
class may attend to the key class) or float (an additive bias, -inf = forbidden; soft mode). The
model call's owner puts one :class:`TokenClasses` in ``transformer_options[CLASSES_KEY]``; every
attention of that call (all blocks, every batch row, both CFG rows) reads it.

The override groups the query classes whose table rows are equal, gathers each group's queries
and the keys its row allows, and runs ComfyUI's own attention function on them (any backend:
pytorch, sub_quad, split, basic...), with a per-key bias only where a row holds finite non-zero
values. A forbidden key is left out, which is exactly what a -inf score does; an allowed key
keeps its natural order. The work is sum over groups of |queries| x |allowed keys| <= S x S.

An override already installed (another pack's) is called for every group, never replaced.
:func:`dense_attention` is the reference path the tests compare against.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

log = logging.getLogger("comfyui_multisubject.masked_attention")

CLASSES_KEY = "msp_token_classes"
OVERRIDE_KEY = "optimized_attention_override"


@dataclass(frozen=True)
class QueryGroup:
    """Queries that share one table row: which keys they see, and the bias on those keys."""

    queries: torch.Tensor  # [Nq] long, positions in the joint sequence
    keys: torch.Tensor | None  # [Nk] long, or None: every key
    bias: torch.Tensor | None  # [Nk] float additive bias on those keys, or None: all zero


@dataclass(eq=False)
class TokenClasses:
    """Per-token class ids and the class table of one model call: the whole mask structure.

    ``probe`` (optional) is called as ``probe(q, k, classes, transformer_options)`` with the
    heads-first q/k of each call, for measurements such as a preview's attention shares.
    """

    class_ids: torch.Tensor  # [S] long
    table: torch.Tensor  # [C, C] bool (True = may attend) or float (additive, -inf = forbidden)
    probe: Callable | None = None
    _plans: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        classes = self.table.shape[0]
        if self.table.dim() != 2 or self.table.shape[1] != classes:
            raise ValueError(f"the class table must be square [C, C], got {tuple(self.table.shape)}")
        if self.class_ids.numel() and (int(self.class_ids.min()) < 0 or int(self.class_ids.max()) >= classes):
            raise ValueError(f"class ids must lie in [0, {classes})")

    @property
    def tokens(self) -> int:
        return self.class_ids.shape[0]

    def additive_table(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The table as additive values: 0 / -inf for a bool table, the table itself otherwise."""
        if self.table.dtype == torch.bool:
            return torch.zeros(self.table.shape, dtype=dtype).masked_fill(~self.table, float("-inf"))
        return self.table.to(dtype)

    def plan(self, device: torch.device) -> tuple[QueryGroup, ...]:
        """The query groups on ``device`` (computed once per call and device, shared by every block)."""
        key = str(device)
        if key not in self._plans:
            self._plans[key] = tuple(QueryGroup(g.queries.to(device), None if g.keys is None else g.keys.to(device),
                                                None if g.bias is None else g.bias.to(device)) for g in self._groups())
        return self._plans[key]

    def _groups(self) -> list[QueryGroup]:
        table = self.additive_table().cpu()
        ids = self.class_ids.cpu()
        present = torch.unique(ids)
        rows, inverse = torch.unique(table[present], dim=0, return_inverse=True)
        groups = []
        for r in range(rows.shape[0]):
            row = rows[r]
            queries = torch.isin(ids, present[inverse == r]).nonzero().flatten()
            per_key = row[ids]
            allowed = torch.isfinite(per_key)
            if not bool(allowed.any()):
                raise ValueError("a query class may attend to no key; every class table row needs an allowed key class")
            keys = None if bool(allowed.all()) else allowed.nonzero().flatten()
            bias = per_key if keys is None else per_key[keys]
            groups.append(QueryGroup(queries, keys, bias if bool(bias.any()) else None))
        return groups

    def dense_mask(self, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
        """The equivalent additive [S, S] mask: for tests and the reference path only."""
        ids = self.class_ids.to(device)
        return self.additive_table(dtype).to(device)[ids[:, None], ids[None, :]]


def classes_from_dense(mask: torch.Tensor) -> TokenClasses:
    """The smallest class ids + table equal to a dense bool [S, S] mask (tokens with equal row and column share a class)."""
    _, row_kind = torch.unique(mask, dim=0, return_inverse=True)
    _, col_kind = torch.unique(mask, dim=1, return_inverse=True)
    pairs, class_ids = torch.unique(torch.stack((row_kind, col_kind), dim=1), dim=0, return_inverse=True)
    first = torch.empty(pairs.shape[0], dtype=torch.long)
    first.scatter_(0, class_ids.flip(0), torch.arange(class_ids.shape[0] - 1, -1, -1))
    return TokenClasses(class_ids, mask[first[:, None], first[None, :]])


def _split_call(args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, torch.Tensor | None, tuple, dict]:
    """(q, k, v, heads, mask, other positional args, other kwargs) of an attention call (mask positional or keyword)."""
    q, k, v, heads, *rest = args
    kwargs = dict(kwargs)
    mask = kwargs.pop("mask", None)
    if rest:
        mask, rest = rest[0], rest[1:]
    return q, k, v, heads, mask, tuple(rest), kwargs


class MaskedAttention:
    """The ``optimized_attention_override`` of a patched model: class-restricted attention, chained to ``base``."""

    def __init__(self, base: Callable | None = None):
        self.base = base  # an override installed before this one (another pack's), called for every attention

    def __deepcopy__(self, memo):
        return self  # stateless: the per-call state lives in transformer_options

    def attend(self, func, *args, **kwargs):
        """Call the wrapped override, or ComfyUI's attention function itself."""
        if self.base is not None:
            return self.base(func, *args, **kwargs)
        return func(*args, **kwargs)

    def __call__(self, func, *args, **kwargs):
        options = kwargs.get("transformer_options") or {}
        classes: TokenClasses | None = options.get(CLASSES_KEY)
        q, k, v, heads, mask, rest, other = _split_call(args, kwargs)
        seq_dim = 2 if other.get("skip_reshape", False) else 1
        if classes is None or q.shape[seq_dim] != classes.tokens or k.shape[seq_dim] != classes.tokens:
            return self.attend(func, *args, **kwargs)
        if classes.probe is not None:
            classes.probe(_heads_first(q, heads, seq_dim), _heads_first(k, heads, seq_dim), classes, options)
        return masked_attention(self.attend, func, q, k, v, heads, classes, mask, rest, other)


def _heads_first(x: torch.Tensor, heads: int, seq_dim: int) -> torch.Tensor:
    """[B, H, S, D] view of q or k in either of ComfyUI's layouts."""
    if seq_dim == 2:
        return x
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def masked_attention(attend: Callable, func, q, k, v, heads: int, classes: TokenClasses, mask=None, rest: tuple = (),
                     kwargs: dict | None = None) -> torch.Tensor:
    """Attention of every query group over its allowed keys, scattered back into one output."""
    kwargs = dict(kwargs or {})
    seq_dim = 2 if kwargs.get("skip_reshape", False) else 1
    out_dim = 2 if kwargs.get("skip_output_reshape", False) else 1
    out = None
    for group in classes.plan(q.device):
        q_g = q.index_select(seq_dim, group.queries)
        k_g = k if group.keys is None else k.index_select(seq_dim, group.keys)
        v_g = v if group.keys is None else v.index_select(seq_dim, group.keys)
        bias = _group_bias(group, mask, q.dtype)
        if rest:  # the mask was positional, with more positional arguments after it
            result = attend(func, q_g, k_g, v_g, heads, bias, *rest, **kwargs)
        else:
            result = attend(func, q_g, k_g, v_g, heads, mask=bias, **kwargs)
        if out is None:
            shape = list(result.shape)
            shape[out_dim] = q.shape[seq_dim]
            out = result.new_empty(shape)
        out.index_copy_(out_dim, group.queries, result)
    return out


def _group_bias(group: QueryGroup, mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """The additive mask of one group: its per-key bias as one [1, K] row (every backend broadcasts a single row over
    the queries, so no [queries, keys] mask is made per head), plus the rows/columns of an incoming mask."""
    bias = None
    if group.bias is not None:
        bias = group.bias.to(dtype)[None, :]
    if mask is None:
        return bias
    incoming = mask.index_select(-2, group.queries)
    if group.keys is not None:
        incoming = incoming.index_select(-1, group.keys)
    if incoming.dtype == torch.bool:
        incoming = torch.zeros(incoming.shape, dtype=dtype, device=incoming.device).masked_fill(~incoming, float("-inf"))
    return incoming.to(dtype) if bias is None else incoming.to(dtype) + bias


def dense_attention(func, q, k, v, heads: int, classes: TokenClasses, **kwargs) -> torch.Tensor:
    """The reference path: one call of ``func`` with the dense additive [S, S] mask of ``classes``."""
    mask = classes.dense_mask(q.dtype, q.device)
    return func(q, k, v, heads, mask=mask, **kwargs)


@contextlib.contextmanager
def restricted(transformer_options: dict, classes: TokenClasses):
    """While active, every attention of the call that owns ``transformer_options`` runs restricted by ``classes``.

    The override is set for the call only, around whatever override is there (another pack's stays
    in the model's options and is called for every query group); both keys are restored afterwards.
    """
    previous = transformer_options.get(OVERRIDE_KEY)
    if not isinstance(previous, MaskedAttention):
        transformer_options[OVERRIDE_KEY] = MaskedAttention(previous)
    transformer_options[CLASSES_KEY] = classes
    try:
        yield
    finally:
        transformer_options.pop(CLASSES_KEY, None)
        if previous is None:
            transformer_options.pop(OVERRIDE_KEY, None)
        else:
            transformer_options[OVERRIDE_KEY] = previous


def install(model, base_key: str = OVERRIDE_KEY) -> MaskedAttention:
    """Put a :class:`MaskedAttention` on ``model`` (a clone), wrapping any override already there; returns it.

    For models whose call has no wrapper that could use :func:`restricted`."""
    options = model.model_options.setdefault("transformer_options", {})
    existing = options.get(base_key)
    if isinstance(existing, MaskedAttention):
        return existing
    override = MaskedAttention(existing)
    options[base_key] = override
    return override


def structure_bytes(classes: TokenClasses) -> int:
    """Bytes the mask structure of one call holds: class ids, table and the query groups' index and bias vectors."""
    tensors = [classes.class_ids, classes.table]
    for group in classes.plan(classes.class_ids.device):
        tensors += [t for t in (group.queries, group.keys, group.bias) if t is not None]
    return sum(t.numel() * t.element_size() for t in tensors)
