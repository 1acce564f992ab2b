"""LAMIC's text groups: SAD_i (one per reference), CEI (the scene text), EPrt (the padding).

Official rules (``LamicProcessor.preprocess_prompt``): a SAD ``{"id", "desc"}`` becomes
``id + "," + desc + "."``; the encoded prompt is SAD_1 + ... + SAD_n + CEI joined with no separator;
the spans come from tokenising every piece on its own (each with its own end token ``</s>``),
laid end to end from 0, so they drift from the tokens of the joined prompt; EPrt is
[sum, 512) and is always present. A sum over 512 crashes the official code (a named error here); a
sum of exactly 512 leaves an empty EPrt group that the official rule table skips (see
``groups.rule_table``). With ``official=False`` the spans are the pieces' real positions in the
joined prompt and no empty EPrt group is made.

A ``TextLayout`` is generic: other text encoders (Qwen's chat template, FLUX.2's left padding) give
their own spans through ``text_layout``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Literal, Mapping, Sequence

LAMIC_TEXT_TOKENS = 512  # the T5 context LAMIC addresses (max_sequence_length)
MAX_TEXT_CHARS = 65536  # bounds the tokeniser's work on hostile text; far above 512 tokens
PADDING_GROUP = "EPrt"
TEXT_GROUP_NAME = re.compile(r"SAD_[1-9][0-9]*|CEI|EPrt")

Tokenize = Callable[[str], Sequence[int]]
"""The ids of one text, end token included, no padding."""


class TextTooLongError(ValueError):
    """The text pieces need more tokens than the context holds (the official code crashes there)."""


@dataclass(frozen=True)
class TextSpan:
    """Text tokens [start, end) of one group ("SAD_<i>", "CEI" or "EPrt")."""

    group: str
    start: int
    end: int


@dataclass(frozen=True)
class TextLayout:
    """Which text group every one of the ``length`` text tokens belongs to.

    The spans are disjoint and cover [0, length) exactly; a group may have several spans (e.g. a
    chat template's prefix and suffix both in EPrt). Only ``lamic_text_layout(official=True)`` makes
    an empty span (the official empty EPrt at exactly 512 tokens).
    """

    length: int
    spans: tuple[TextSpan, ...]

    def __post_init__(self):
        position = 0
        for span in sorted(self.spans, key=lambda s: (s.start, s.end)):
            if not TEXT_GROUP_NAME.fullmatch(span.group):
                raise ValueError(f"text group {span.group[:40]!r} is not SAD_<i>, CEI or EPrt")
            if span.start != position or span.end < span.start:
                raise ValueError(f"text spans must tile [0, {self.length}) without gaps or overlaps; "
                                 f"{span.group} is [{span.start}, {span.end}) where {position} was expected")
            position = span.end
        if position != self.length:
            raise ValueError(f"text spans end at {position}, the text has {self.length} tokens")

    def groups(self) -> list[str]:
        """The group names, each once, in order of first appearance."""
        return list(dict.fromkeys(span.group for span in self.spans))


def sad_text(sad: str | Mapping[str, str]) -> str:
    """A SAD as LAMIC reads it: ``id + "," + desc + "."`` (no space after the comma), or the string as is."""
    if isinstance(sad, str):
        return sad
    return sad["id"] + "," + sad["desc"] + "."


def joined_prompt(sad_texts: Sequence[str], cei: str) -> str:
    """The text LAMIC encodes: every SAD then the CEI, with no separator (the sample's "prompt" is unused)."""
    return "".join(sad_texts) + cei


def prompt_tokenize_kwargs(length: int = LAMIC_TEXT_TOKENS) -> dict:
    """Keyword arguments for ComfyUI's ``CLIP.tokenize`` that encode the joined prompt as LAMIC does.

    The T5 context is padded to ``length`` tokens (ComfyUI's Flux default is 256) and no ``(text:1.2)``
    weights are parsed (the official tokeniser reads brackets literally). Spans from ``comfy_tokenize``
    use the same settings, so they index the same tokens.
    """
    return {"disable_weights": True, "tokenizer_options": {"t5xxl_min_length": length}}


def comfy_tokenize(tokenizer) -> Tokenize:
    """A ``Tokenize`` from one ComfyUI ``SDTokenizer`` (e.g. ``clip.tokenizer.t5xxl``): no padding, no weights."""
    options = {"disable_weights": True, "tokenizer_options": {f"{tokenizer.embedding_key}_min_length": 0}}

    def tokenize(text: str) -> list[int]:
        if len(text) > MAX_TEXT_CHARS:
            raise TextTooLongError(f"a text of {len(text)} characters is too long (at most {MAX_TEXT_CHARS})")
        batches = tokenizer.tokenize_with_weights(text, **options)
        return [int(token) for batch in batches for token, _weight in batch]

    return tokenize


def text_layout(pieces: Sequence[tuple[str, int]], length: int,
                padding: Literal["right", "left", "none"] = "right") -> TextLayout:
    """(group, token count) pieces laid end to end, and the padding group EPrt filling the rest.

    ``padding``: "right" puts EPrt after the pieces (T5), "left" before them (FLUX.2 pads the context
    on the left), "none" means the pieces must fill the text exactly (Qwen). An empty EPrt is left out.
    """
    used = sum(count for _group, count in pieces)
    if used > length:
        raise TextTooLongError(f"the text needs {used} tokens, the context holds {length}: shorten the descriptions or the prompt")
    if padding == "none" and used != length:
        raise ValueError(f"the pieces cover {used} of {length} text tokens and there is no padding group")
    free = length - used
    position = free if padding == "left" else 0
    spans = [TextSpan(PADDING_GROUP, 0, free)] if padding == "left" and free else []
    for group, count in pieces:
        spans.append(TextSpan(group, position, position + count))
        position += count
    if padding == "right" and free:
        spans.append(TextSpan(PADDING_GROUP, used, length))
    return TextLayout(length, tuple(spans))


def piece_token_counts(tokenize: Tokenize, pieces: Sequence[str]) -> list[int]:
    """Official: the token count of every piece tokenised on its own, end token included."""
    return [len(tokenize(piece)) for piece in pieces]


def joined_token_counts(tokenize: Tokenize, pieces: Sequence[str]) -> list[int]:
    """Exact: how many tokens of the joined text each piece owns.

    Piece k ends where the tokens of the first k pieces stop agreeing with the joined text's, so a
    token merged across a boundary ("man." + "a") goes to the later piece; the last piece owns the
    end token.
    """
    joined = list(tokenize("".join(pieces)))
    ends = []
    for k in range(1, len(pieces)):
        prefix = tokenize("".join(pieces[:k]))
        common = next((i for i, (a, b) in enumerate(zip(prefix, joined)) if a != b), min(len(prefix), len(joined)))
        ends.append(max(common, ends[-1] if ends else 0))
    ends.append(len(joined))
    return [end - start for start, end in zip([0, *ends[:-1]], ends)]


def lamic_text_layout(tokenize: Tokenize, sad_texts: Sequence[str], cei: str, *,
                      length: int = LAMIC_TEXT_TOKENS, official: bool = True) -> TextLayout:
    """LAMIC's text groups SAD_1..SAD_n, CEI, EPrt for a T5 context of ``length`` tokens.

    ``official``: spans from the separate tokenisation (they drift from the joined prompt's tokens)
    and an EPrt group even when it is empty (exactly ``length`` tokens). Otherwise the spans are the
    pieces' real positions in the joined prompt and an empty EPrt is left out. Either way more than
    ``length`` tokens raise ``TextTooLongError``.
    """
    pieces = [*sad_texts, cei]
    counts = (piece_token_counts if official else joined_token_counts)(tokenize, pieces)
    names = [f"SAD_{i}" for i in range(1, len(sad_texts) + 1)] + ["CEI"]
    layout = text_layout(list(zip(names, counts)), length)
    if official and sum(counts) == length:
        return TextLayout(length, (*layout.spans, TextSpan(PADDING_GROUP, length, length)))
    return layout
