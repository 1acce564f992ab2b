"""Find each subject's phrase among the prompt's tokens, with ComfyUI's own tokenizer.

Positions are indices into the text context the UNet sees: a prompt longer than 77 tokens
becomes several 77-token chunks laid end to end. Matching is on token ids, so weights
``(dog:1.2)``, punctuation and case do not matter. When several subjects share a phrase, the
k-th of them takes the k-th occurrence ("a dog and a dog").
"""

from __future__ import annotations

from collections import defaultdict
from string import punctuation

from ..models.safe_text import quoted


class PhraseNotFoundError(ValueError):
    pass


def _word_tokenizer(tokenizer):
    """The CLIP-L tokenizer inside a ComfyUI CLIP tokenizer (SDXL: its token positions match CLIP-G's)."""
    return getattr(tokenizer, "clip_l", tokenizer)


def prompt_tokens(tokenizer, text: str) -> list[tuple[int, int, int]]:
    """(position in the context, token id, word id) of every real token of ``text``."""
    chunks = _word_tokenizer(tokenizer).tokenize_with_weights(text, return_word_ids=True)
    out = []
    for c, chunk in enumerate(chunks):
        for i, (token, _weight, word_id) in enumerate(chunk):
            if word_id > 0 and isinstance(token, int):
                out.append((c * len(chunk) + i, token, word_id))
    return out


def _words(tokenizer, tokens: list[tuple[int, int, int]]) -> list[str]:
    """The distinct tokens of the prompt as text, punctuation left out."""
    decode = _word_tokenizer(tokenizer).tokenizer.decode
    words = (decode([token]).strip() for _pos, token, _word in tokens)
    return list(dict.fromkeys(w for w in words if w and not all(c in punctuation for c in w)))


def locate_phrases(tokenizer, prompt: str, phrases: list[str],
                   why: str = "auto routing follows the model's attention to that phrase") -> tuple[tuple[int, ...], ...]:
    """Context positions of each phrase's tokens, or a :class:`PhraseNotFoundError` naming what the prompt has.

    ``why`` says in the error what the phrase is needed for.
    """
    tokens = prompt_tokens(tokenizer, prompt)
    ids = [token for _pos, token, _word in tokens]
    seen: dict[str, int] = defaultdict(int)
    located = []
    for number, phrase in enumerate(phrases, start=1):
        phrase_ids = [token for _pos, token, _word in prompt_tokens(tokenizer, phrase)]
        starts = [i for i in range(len(ids) - len(phrase_ids) + 1) if phrase_ids and ids[i:i + len(phrase_ids)] == phrase_ids]
        occurrence = seen[phrase]
        seen[phrase] += 1
        if occurrence >= len(starts):
            words = _words(tokenizer, tokens)
            found = ", ".join(quoted(w, 40) for w in words[:30]) + (", ..." if len(words) > 30 else "") or "nothing"
            times = "" if not starts else f" {occurrence + 1} times (once per subject with that phrase)"
            raise PhraseNotFoundError(
                f"subject {number}'s phrase {quoted(phrase)} is not in the prompt{times}; {why}. "
                f"Words in the prompt: {found}. Put the phrase in the prompt or "
                "change the subject's phrase in Encode Reference."
            )
        start = starts[occurrence]
        located.append(tuple(tokens[i][0] for i in range(start, start + len(phrase_ids))))
    return tuple(located)
