"""Token groups, LAMIC's group rule table and the token-level attention mask as classes.

Joint sequence: [text | target tokens | reference 1 | ... | reference n]. Group order (the
official index order): SAD_1..SAD_n, CEI, EPrt, Reg_1..Reg_n, [UReg], Ref_1..Ref_n; a group is
listed only if present (LAMIC always has all but UReg; other families may lack some). The mask
is M[q, k] = OR over groups g containing q and h containing k of rule[g, h]. Tokens with the same
group membership behave the same, so the mask is a per-token class id [S] plus a small class table
[C, C]; the dense [S, S] exists only for tests and references.

Soft mode (the pack's, not LAMIC's): per-reference strength s in [0, 1]. A forbidden class pair
gets the additive bias log(1 - s) (s = 1: -inf, LAMIC's full isolation; s = 0: 0, no restriction;
in between the key's attention weight is scaled by 1 - s before normalisation). s of a pair is the
largest strength among the references whose groups (SAD_i, Reg_i, Ref_i) are in the query's or
the key's class; a pair that touches no reference's group (e.g. CEI -> UReg in stage 1) takes the
largest strength of all, so all strengths 1 is exactly LAMIC and all 0 is no mask at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .regions import deoverlap as deoverlap_regions, uncontrolled_region
from .text import PADDING_GROUP, TextLayout

REFERENCE_KINDS = ("SAD", "Reg", "Ref")  # the kinds that belong to one reference
GROUP_ORDER = ("SAD", "CEI", "EPrt", "Reg", "UReg", "Ref")

# (query kind, key kind) -> (stage 1, stage 2); "all", "none" or "match" (same reference).
# configs/attention_mask_logic_map.json: "stage" = none/all, "match to all" = match/all.
_RULES = {
    "SAD": {"SAD": "match", "CEI": "all", "EPrt": "all", "Reg": "match", "UReg": "none", "Ref": "match"},
    "CEI": {"SAD": "all", "CEI": "all", "EPrt": "all", "Reg": ("none", "all"), "UReg": ("none", "all"), "Ref": "all"},
    "EPrt": {"SAD": "all", "CEI": "all", "EPrt": "all", "Reg": "all", "UReg": "all", "Ref": "all"},
    "Reg": {"SAD": "match", "CEI": ("none", "all"), "EPrt": "all", "Reg": ("match", "all"), "UReg": ("none", "all"),
            "Ref": "match"},
    "UReg": {"SAD": "none", "CEI": ("none", "all"), "EPrt": "all", "Reg": ("none", "all"), "UReg": "all", "Ref": "none"},
    "Ref": {"SAD": "match", "CEI": "all", "EPrt": "all", "Reg": "match", "UReg": "none", "Ref": "match"},
}


@dataclass(frozen=True)
class Group:
    """One token group: ``kind`` in GROUP_ORDER and, for SAD/Reg/Ref, its 1-based reference."""

    kind: str
    reference: int | None = None

    @property
    def name(self) -> str:
        return self.kind if self.reference is None else f"{self.kind}_{self.reference}"

    @classmethod
    def from_name(cls, name: str) -> "Group":
        kind, _, number = name.partition("_")
        return cls(kind, int(number)) if number else cls(kind)


def allows(query: Group, key: Group, stage: int) -> bool:
    """LAMIC's rule (§3.1 of the notes): may a ``query`` token of this group attend to a ``key`` token in ``stage`` 1 or 2."""
    rule = _RULES[query.kind][key.kind]
    rule = rule[stage - 1] if isinstance(rule, tuple) else rule
    return rule == "all" or (rule == "match" and query.reference == key.reference)


@dataclass(frozen=True)
class TokenGroups:
    """Every group of one joint sequence and its [G, S] bool membership, before and after de-overlap."""

    groups: tuple[Group, ...]
    membership: torch.Tensor
    membership_stage1: torch.Tensor

    @property
    def names(self) -> list[str]:
        return [group.name for group in self.groups]


def token_groups(text: TextLayout, regions: Sequence[torch.Tensor], reference_tokens: Sequence[int],
                 deoverlap: Sequence[Sequence[int]] = ()) -> TokenGroups:
    """The groups of [text | target | references] and their membership.

    ``regions``: one bool [target tokens] per reference (``regions`` module); ``reference_tokens``:
    each reference's token count, in order after the target; ``deoverlap``: per reference the
    1-based references whose original regions it loses in stage 1. UReg is added iff no single
    region covers the whole target (it may be empty).

    Beyond the official code: when references subtract each other (de-overlap both ways), target
    tokens can lose every region in stage 1; the official mask then lets them attend to nothing
    (NaN). Here they join UReg in stage 1 (added, empty in stage 2, if there was none), so every
    token is in some group in both stages.
    """
    if not regions or len(regions) != len(reference_tokens):
        raise ValueError(f"{len(regions)} regions for {len(reference_tokens)} references: give one region per reference (at least one)")
    target = regions[0].numel()
    if any(region.shape != (target,) for region in regions):
        raise ValueError("every region must be a bool vector over the same target tokens")
    ordered_text = sorted(map(Group.from_name, text.groups()), key=lambda g: (GROUP_ORDER.index(g.kind), g.reference or 0))
    extra_sads = [g.name for g in ordered_text if g.kind == "SAD" and g.reference > len(regions)]
    if extra_sads:
        raise ValueError(f"text group {extra_sads[0]} has no reference; there are {len(regions)}")
    size = text.length + target + sum(reference_tokens)

    def span_row(spans):
        row = torch.zeros(size, dtype=torch.bool)
        for start, end in spans:
            row[start:end] = True
        return row

    def target_row(region):
        row = span_row([])
        row[text.length:text.length + target] = region
        return row

    groups, full, stage1 = [], [], []

    def add(group, row, row_stage1=None):
        groups.append(group)
        full.append(row)
        stage1.append(row if row_stage1 is None else row_stage1)

    for group in ordered_text:
        add(group, span_row([(s.start, s.end) for s in text.spans if s.group == group.name]))
    stage1_regions = deoverlap_regions(regions, deoverlap)
    for i, (region, region_stage1) in enumerate(zip(regions, stage1_regions)):
        add(Group("Reg", i + 1), target_row(region), target_row(region_stage1))
    uncovered = uncontrolled_region(regions)
    orphans = torch.stack(list(regions)).any(0) & ~torch.stack(stage1_regions).any(0)
    if uncovered is not None or orphans.any():
        base = uncovered if uncovered is not None else torch.zeros(target, dtype=torch.bool)
        add(Group("UReg"), target_row(base), target_row(base | orphans))
    start = text.length + target
    for i, count in enumerate(reference_tokens):
        add(Group("Ref", i + 1), span_row([(start, start + count)]))
        start += count
    return TokenGroups(tuple(groups), torch.stack(full), torch.stack(stage1))


def rule_table(groups: Sequence[Group], stage: int, *, empty_padding_quirk: bool = False) -> torch.Tensor:
    """[G, G] bool group rule table (query rows, key columns) for stage 1 or 2.

    ``empty_padding_quirk``: the official code at exactly 512 text tokens. It keeps the empty EPrt
    group in its index list but builds the table without an EPrt row and column, so every group
    after EPrt takes the rules of the next one and the last group (Ref_n) gets none at all (its
    tokens attend to nothing; SDPA gives NaN there).
    """
    if stage not in (1, 2):
        raise ValueError(f"LAMIC has stages 1 and 2, not {stage}")
    ruled = [g for g in groups if g.kind != PADDING_GROUP] if empty_padding_quirk else list(groups)
    table = torch.zeros(len(groups), len(groups), dtype=torch.bool)
    table[:len(ruled), :len(ruled)] = torch.tensor([[allows(q, k, stage) for k in ruled] for q in ruled], dtype=torch.bool)
    return table


@dataclass(frozen=True)
class ClassMask:
    """The token mask as classes: ``class_ids`` [S] long, ``class_groups`` [C, G] bool, ``allowed`` [C, C] bool."""

    class_ids: torch.Tensor
    class_groups: torch.Tensor
    allowed: torch.Tensor

    def dense(self) -> torch.Tensor:
        """The [S, S] bool mask (True = may attend); for tests and references only."""
        return self.allowed[self.class_ids][:, self.class_ids]


def class_mask(membership: torch.Tensor, rules: torch.Tensor) -> ClassMask:
    """Tokens with identical group membership share a class; allowed = OR of the rules of their groups."""
    class_groups, class_ids = torch.unique(membership.T, dim=0, return_inverse=True)
    lifted = class_groups.float() @ rules.float() @ class_groups.float().T
    return ClassMask(class_ids, class_groups, lifted > 0)


def dense_mask(membership: torch.Tensor, rules: torch.Tensor) -> torch.Tensor:
    """Reference formula (A^T R A) > 0 as a dense [S, S] bool; for tests only."""
    a = membership.float()
    return (a.T @ rules.float() @ a) > 0


def has_empty_padding(groups: TokenGroups) -> bool:
    """An EPrt group without tokens: only the official text layout at exactly its length makes one."""
    return any(g.kind == PADDING_GROUP and not bool(row.any()) for g, row in zip(groups.groups, groups.membership))


def stage_mask(groups: TokenGroups, stage: int, *, deoverlap: bool = True) -> ClassMask:
    """LAMIC's mask of ``stage``: stage 1 on the de-overlapped regions (``deoverlap=False``: the
    official "stage 1 before de-overlap", which is only logged), stage 2 on the original ones.
    An empty EPrt group reproduces the official misaligned table (``rule_table``)."""
    membership = groups.membership_stage1 if stage == 1 and deoverlap else groups.membership
    return class_mask(membership, rule_table(groups.groups, stage, empty_padding_quirk=has_empty_padding(groups)))


def soft_bias(mask: ClassMask, groups: Sequence[Group], strengths: Sequence[float]) -> torch.Tensor:
    """[C, C] float32 additive bias of the soft mode (module docstring): 0 where allowed, log(1 - s) where not."""
    n = sum(group.kind == "Ref" for group in groups)
    if len(strengths) != n or any(not 0.0 <= s <= 1.0 for s in strengths):
        raise ValueError(f"give one strength in [0, 1] per reference ({n}), got {list(strengths)[:16]}")
    owner = torch.zeros(len(groups), n, dtype=torch.bool)
    for row, group in enumerate(groups):
        if group.kind in REFERENCE_KINDS:
            owner[row, group.reference - 1] = True
    class_refs = (mask.class_groups.float() @ owner.float()) > 0  # [C, n]
    strength = torch.tensor([float(s) for s in strengths])
    involved = class_refs[:, None, :] | class_refs[None, :, :]  # [C, C, n]
    pair = torch.where(involved, strength, torch.zeros(())).amax(-1)
    pair = torch.where(involved.any(-1), pair, strength.max())
    return torch.where(mask.allowed, torch.zeros(()), torch.log1p(-pair))
