"""Warnings for graphs that run but do not do what they seem to: a phrase missing from the positive prompt,
a box labelled with another phrase, a reference input the kind in use does not read.

For kinds that ground a subject by its phrase (their capabilities name a phrase tokenizer), a
phrase missing from the prompt would otherwise run silently with a weaker or misplaced subject.
Warnings go to the log and, while the node runs, to the node itself in the frontend (ComfyUI's
progress text under the node). They come from the kind's declared capabilities, so each names
the kind actually in use.
"""

from __future__ import annotations

import logging
import re

from .notifier import NOTIFIER

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


def subject_warnings(phrases: list[str], labels: list[str], positive_texts: list[str], kind) -> list[str]:
    """One line per problem: a phrase no positive prompt mentions (for a ``kind`` that grounds by phrase),
    a box labelled with another phrase."""
    warnings = []
    tokenizer = kind.capabilities.phrase_tokenizer
    if positive_texts and tokenizer is not None:
        for number, phrase in enumerate(phrases, start=1):
            if not any(mentions(text, phrase) for text in positive_texts):
                warnings.append(f"subject {number}'s phrase {quoted(phrase)} is not in the positive prompt: "
                                f"mention it there ({kind.title} grounds each subject by its phrase in the prompt, "
                                f"found with {tokenizer}), or change the phrase to the prompt's word for it")
    for number, (phrase, label) in enumerate(zip(phrases, labels), start=1):
        if label and label.strip().lower() != phrase.lower():
            warnings.append(f"box {number} is labelled {quoted(label)} but subject {number} is {quoted(phrase)}: "
                            "box i belongs to subject i (the order the Encode Reference nodes are chained)")
    return warnings


WIDGET_DEFAULTS = {"query": "", "description": "", "mask_weight": 5.0}  # Encode Reference's widgets: set when not these


def connected_inputs(reference) -> set[str]:
    """The Encode Reference inputs of ``reference`` that are connected (sockets) or set (widgets)."""
    sockets = {name for name in ("clip_vision", "clip", "vae", "mask") if getattr(reference, name) is not None}
    widgets = {name for name, default in WIDGET_DEFAULTS.items() if getattr(reference, name) not in (None, default)}
    return sockets | widgets


def unused_input_warnings(kind, reference) -> list[str]:
    """One line per connected or set input of ``reference`` that ``kind`` does not read."""
    unused = sorted(connected_inputs(reference) - kind.capabilities.reference_inputs)
    return [f"Encode Reference's '{name}' is {'connected' if name in ('clip_vision', 'clip', 'vae') else 'set'} but "
            f"{kind.title} does not read it: it has no effect (disconnect or clear it)" for name in unused]


def readers(kinds, name: str) -> str:
    """Which kinds read Encode Reference's input ``name`` and which need it, for its tooltip."""
    reading = [f"{kind.title}{' (required)' if name in kind.capabilities.required_inputs else ''}"
               for kind in kinds if name in kind.capabilities.reference_inputs]
    return f"read by {', '.join(reading)}" if reading else "read by no kind of this pack"


def show_warnings(node_name: str, node_id: str | None, warnings: list[str]) -> None:
    """Log the warnings and show them on the running node in the frontend (when a server runs it)."""
    for warning in warnings:
        log.warning("%s: %s", node_name, warning)
    if warnings:
        NOTIFIER.show_text(node_id, "\n".join(f"⚠ {w}" for w in warnings))
