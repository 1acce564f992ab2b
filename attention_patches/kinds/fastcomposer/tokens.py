"""Which context token each person's fused embedding replaces: the last token of the person's word.

Officially the user writes a marker right after the word ("a man img and a woman img") and the
token just before each marker is flagged, i.e. the last BPE piece of the word ("zorblaxian" ->
``xian</w>``). Here the word is the subject's phrase, found in the prompt with ComfyUI's own
tokenizer (the k-th subject with a phrase takes its k-th occurrence: "a man and a man"), and the
position is the phrase's last token. Positions index the context the UNet sees, so a prompt
longer than 77 tokens (ComfyUI's extra 77-token chunks; the official code truncates) still
finds a word in a later chunk.
"""

from __future__ import annotations

from ...phrase_tokens import PhraseNotFoundError, locate_phrases

WHY = "FastComposer fuses each person's face into the last token of that person's word"


def subject_token_positions(tokenizer, prompt: str, phrases: list[str]) -> tuple[int, ...]:
    """Context position of each phrase's last token, or a PhraseNotFoundError naming what the prompt has."""
    located = locate_phrases(tokenizer, prompt, phrases, why=WHY)
    return tuple(tokens[-1] for tokens in located)


__all__ = ["PhraseNotFoundError", "subject_token_positions"]
