"""Warnings for graphs that run but ground a subject poorly: its phrase missing from the positive prompt,
or its box labelled with another phrase.

With MS-Diffusion the phrase is what grounds a subject (its tokens in the prompt, its phrase
embedding), so both cases would otherwise run silently with a weaker or misplaced subject. Warnings go to the log and, while the node runs, to the node itself in the
frontend (ComfyUI's progress text under the node).
"""

from __future__ import annotations

import logging
import re
import sys

log = logging.getLogger("comfyui_multisubject")

TEXT_INPUTS = ("text", "text_g", "text_l")
CONDITIONING_INPUTS = ("positive", "conditioning", "conditioning_1", "conditioning_2", "conditioning_to", "conditioning_from")
MAX_VISITS = 256  # nodes walked per search: the cost stays small and bounded whatever the prompt
MAX_SHOWN = 80  # characters of user text quoted in a warning


def quoted(text: str) -> str:
    """User text made safe to log and to send (lone surrogates escaped) and bounded in length."""
    text = text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "…"
    return "'" + text.encode("utf-8", "backslashreplace").decode("utf-8") + "'"


def _link(value) -> str | None:
    if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
        return str(value[0])
    return None


def _inputs(prompt: dict, node_id: str | None) -> dict:
    node = prompt.get(node_id) if node_id is not None else None
    inputs = node.get("inputs") if isinstance(node, dict) else None
    return inputs if isinstance(inputs, dict) else {}


def _samples_model_of(prompt: dict, model, apply_id: str) -> bool:
    """True if this MODEL input comes from ``apply_id``, directly or through other MODEL nodes (LoRA, ...)."""
    for _ in range(MAX_VISITS):
        source = _link(model)
        if source is None:
            return False
        if source == apply_id:
            return True
        model = _inputs(prompt, source).get("model")
    return False


def _texts_upstream(prompt: dict, positive) -> list[str]:
    """The prompt texts a positive conditioning input is made of (through ControlNet, combine, area nodes...)."""
    texts, pending, seen = [], [_link(positive)], set()
    while pending and len(seen) < MAX_VISITS:
        node_id = pending.pop()
        if node_id is None or node_id in seen:
            continue
        seen.add(node_id)
        inputs = _inputs(prompt, node_id)
        for name in TEXT_INPUTS:
            value = inputs.get(name)
            if isinstance(value, str):
                texts.append(value)
            elif _link(value) is not None:
                texts += [v for v in _inputs(prompt, _link(value)).values() if isinstance(v, str)]
        pending += [_link(inputs.get(name)) for name in CONDITIONING_INPUTS]
    return texts


def positive_prompts(prompt: dict | None, apply_id: str | None) -> list[str]:
    """Texts of the positive prompts sampled with this Apply node's MODEL, as far as the API prompt shows them."""
    if not isinstance(prompt, dict) or apply_id is None:
        return []
    texts = []
    for node_id in list(prompt)[:MAX_VISITS * 16]:
        inputs = _inputs(prompt, node_id)
        if "positive" in inputs and _samples_model_of(prompt, inputs.get("model"), str(apply_id)):
            texts += _texts_upstream(prompt, inputs["positive"])
    return texts


def mentions(text: str, phrase: str) -> bool:
    """The phrase starts a word of the text (case-insensitive), so 'dog' is found in 'two dogs'."""
    return re.search(r"(?<!\w)" + re.escape(phrase.lower()), text.lower()) is not None


def subject_warnings(phrases: list[str], labels: list[str], positive_texts: list[str]) -> list[str]:
    """One line per problem: a phrase no positive prompt mentions, a box labelled with another phrase."""
    warnings = []
    if positive_texts:
        for number, phrase in enumerate(phrases, start=1):
            if not any(mentions(text, phrase) for text in positive_texts):
                warnings.append(f"subject {number}'s phrase {quoted(phrase)} is not in the positive prompt: "
                                "mention it there (MS-Diffusion grounds each subject by its phrase in the prompt), "
                                "or change the phrase to the prompt's word for it")
    for number, (phrase, label) in enumerate(zip(phrases, labels), start=1):
        if label and label.strip().lower() != phrase.lower():
            warnings.append(f"box {number} is labelled {quoted(label)} but subject {number} is {quoted(phrase)}: "
                            "box i belongs to subject i (the order the Encode Reference nodes are chained)")
    return warnings


def word_positions(text: str, phrases: list[str]) -> tuple[int | None, ...]:
    """Where each phrase starts in ``text``, counted in words and punctuation marks (as a tokenizer counts), or None."""
    lowered, positions = text.lower(), []
    for phrase in phrases:
        match = re.search(r"(?<!\w)" + re.escape(phrase.lower()), lowered)
        positions.append(None if match is None else len(re.findall(r"\w+|[^\w\s]", lowered[:match.start()])))
    return tuple(positions)


def prompt_warnings(phrases: list[str], prompt: str, positive_texts: list[str]) -> list[str]:
    """A warning when Apply's ``prompt`` (where the subjects' words are looked up) places them elsewhere than every
    positive prompt that samples its MODEL: the subjects would land on other words (e.g. swapped people)."""
    if not prompt.strip() or not positive_texts:
        return []
    wanted = word_positions(prompt, phrases)
    if any(word_positions(text, phrases) == wanted for text in positive_texts):
        return []
    return [f"Apply's 'prompt' {quoted(prompt)} places the subjects' words ({', '.join(map(quoted, phrases))}) at other "
            f"positions than the positive prompt {quoted(positive_texts[0])}: each subject would land on another word. "
            "Use the same text in both (drag one text node's link onto 'prompt' and the CLIP Text Encode's 'text')"]


def show_warnings(node_name: str, node_id: str | None, warnings: list[str]) -> None:
    """Log the warnings and show them on the running node in the frontend (when a server runs it)."""
    for warning in warnings:
        log.warning("%s: %s", node_name, warning)
    server = getattr(getattr(sys.modules.get("server"), "PromptServer", None), "instance", None)
    if warnings and server is not None and node_id is not None:  # to the client that queued the prompt
        server.send_progress_text("\n".join(f"⚠ {w}" for w in warnings), str(node_id), getattr(server, "client_id", None))
