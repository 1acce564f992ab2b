"""The encoder-kind seam: what every kind of subject encoder gives the five nodes.

A kind (one method on one base model, e.g. MS-Diffusion on SDXL) recognises its checkpoint by its
keys, loads it, encodes a reference, checks and patches a MODEL, and owns its layer map. The
nodes and the generic glue (the attn2 chain, the per-run wrapper, routing, layouts, previews)
only ever talk to this interface, so a new kind is a new folder plus one line in the registry.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Literal
from weakref import WeakKeyDictionary

import torch

from ...models.safe_text import quoted


class SubjectSetupError(ValueError):
    """Inputs that cannot work together; the message names the problem and the fix."""


REFERENCE_INPUTS = frozenset({"clip_vision", "clip", "vae", "mask", "query", "mask_weight", "description"})
SETTING_TYPES = ("FLOAT", "INT", "BOOLEAN", "STRING", "COMBO")
MAX_SETTING_TEXT = 2000  # characters of a STRING setting: bounded work whatever is typed or sent
NO_SETTINGS: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class Setting:
    """One of a kind's own settings: a widget of its generated settings node, validated by its declaration."""

    name: str
    type: Literal["FLOAT", "INT", "BOOLEAN", "STRING", "COMBO"]
    default: Any
    min: float | None = None
    max: float | None = None
    step: float | None = None
    options: tuple[str, ...] = ()
    tooltip: str = ""

    def __post_init__(self):
        """A declaration that could not be validated (unbounded number, default out of range) fails at import."""
        if not self.name.isidentifier():
            raise TypeError(f"setting name {self.name!r} must be an identifier (it is a widget name in saved workflows)")
        if self.type not in SETTING_TYPES:
            raise TypeError(f"setting {self.name}: type {self.type!r} is not one of {', '.join(SETTING_TYPES)}")
        if self.type in ("FLOAT", "INT") and (self.min is None or self.max is None):
            raise TypeError(f"setting {self.name}: a number needs min and max")
        if self.type == "COMBO" and not self.options:
            raise TypeError(f"setting {self.name}: a COMBO needs options")
        self.checked(self.default)

    @property
    def allowed(self) -> str:
        """The allowed values, in the words of an error message."""
        if self.type in ("FLOAT", "INT"):
            return f"a{'n integer' if self.type == 'INT' else ' finite number'} from {self.min:g} to {self.max:g}"
        if self.type == "COMBO":
            return "one of " + ", ".join(quoted(option) for option in self.options[:20])
        if self.type == "BOOLEAN":
            return "true or false"
        return f"text of at most {MAX_SETTING_TEXT} characters"

    def checked(self, value: Any) -> Any:
        """``value`` if it is allowed, else a SubjectSetupError naming this setting and what it allows."""
        if self.type == "FLOAT":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            ok = ok and self.min <= value <= self.max
            value = float(value) if ok else value
        elif self.type == "INT":
            ok = isinstance(value, int) and not isinstance(value, bool) and self.min <= value <= self.max
        elif self.type == "BOOLEAN":
            ok = isinstance(value, bool)
        elif self.type == "STRING":
            ok = isinstance(value, str) and len(value) <= MAX_SETTING_TEXT
        else:
            ok = isinstance(value, str) and value in self.options
        if not ok:
            shown = quoted(value) if isinstance(value, str) else f"{value!r:.40}"
            raise SubjectSetupError(f"setting '{self.name}' must be {self.allowed}, got {shown}")
        return value


@dataclass(frozen=True)
class Capabilities:
    """What a kind needs and uses: the nodes validate, warn and build its settings node from this, never from its name."""

    needs_file: bool = True  # False: listed by Load Subject Encoder without a file, built by ``builtin()``
    layout: Literal["required", "optional"] = "optional"
    reference_inputs: frozenset[str] = frozenset()  # the Encode Reference inputs it reads (REFERENCE_INPUTS)
    required_inputs: frozenset[str] = frozenset()  # those of them that must be connected
    phrase_tokenizer: str | None = None  # the tokenizer its phrase grounding uses, for messages; None: no phrase grounding
    settings: tuple[Setting, ...] = ()  # its own settings (its generated settings node)

    def __post_init__(self):
        if self.layout not in ("required", "optional"):
            raise TypeError(f"layout must be 'required' or 'optional', got {self.layout!r}")
        if not self.reference_inputs <= REFERENCE_INPUTS:
            raise TypeError(f"unknown reference inputs {sorted(self.reference_inputs - REFERENCE_INPUTS)}")
        if not self.required_inputs <= self.reference_inputs:
            raise TypeError(f"required inputs {sorted(self.required_inputs - self.reference_inputs)} are not read")
        names = [setting.name for setting in self.settings]
        if len(set(names)) != len(names):
            raise TypeError(f"settings declared twice: {names}")

    def kind_settings(self, given: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
        """Every declared setting: ``given``'s value, checked, or the declared default. Undeclared names are refused."""
        given = given or {}
        declared = {setting.name: setting for setting in self.settings}
        unknown = [name for name in given if name not in declared]
        if unknown:
            known = ", ".join(declared) or "none"
            raise SubjectSetupError(f"unknown setting {quoted(str(unknown[0]))}; this kind's settings: {known}")
        return MappingProxyType({name: setting.checked(given[name]) if name in given else setting.default
                                 for name, setting in declared.items()})


@dataclass(frozen=True)
class ApplySettings:
    """Apply Multi-Subject Attention's inputs; a kind uses the ones that mean something to it."""

    scale: float = 0.6
    subject_scales: tuple[float, ...] | None = None
    start_percent: float = 0.0
    end_percent: float = 1.0
    drop_grounding: bool = False
    feather: float = 0.0
    auto_routing: bool = False  # refine the routes from the model's own attention to each phrase
    phrase_tokens: tuple[tuple[int, ...], ...] = ()  # auto routing: each subject's token positions in the prompt
    mask_threshold: float = 0.5  # auto routing: attention needed to join a subject's route
    start_step: int = 5  # auto routing: the boxes route the steps before this one
    prompt: str = ""  # the positive prompt text (auto routing, token positions)
    kind_settings: Mapping[str, Any] = field(default_factory=lambda: NO_SETTINGS)  # the kind's own settings, checked and defaulted (Capabilities.kind_settings)

    def __post_init__(self):
        """Numbers a linked input or an API prompt sends unchecked (NaN passes ComfyUI's min/max) are refused by name."""
        check_number("scale", self.scale, 0.0, MAX_SCALE)
        for number, value in enumerate(self.subject_scales or (), start=1):
            check_number(f"subject_scales (subject {number})", value, 0.0, MAX_SCALE)
        check_number("start_percent", self.start_percent, 0.0, 1.0)
        check_number("end_percent", self.end_percent, 0.0, 1.0)
        check_number("feather", self.feather, 0.0, MAX_FEATHER)
        if self.auto_routing:
            check_number("mask_threshold", self.mask_threshold, 0.0, 1.0)


MAX_SCALE = 3.0  # the scale widget's maximum; far above it the subjects' values swamp the text (black images)
MAX_FEATHER = 64.0  # latent pixels, the feather widget's maximum
MAX_MASK_WEIGHT = 20.0  # Encode Reference's mask_weight widget maximum


def check_number(name: str, value: object, low: float, high: float) -> None:
    """A SubjectSetupError naming ``name`` unless ``value`` is a finite number within [low, high]."""
    finite = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not finite or not low <= value <= high:
        raise SubjectSetupError(f"{name} must be a finite number from {low:g} to {high:g}, got {value!r:.40}")


@dataclass(frozen=True, eq=False)
class Reference:
    """One subject as Encode Reference received it, before any kind has encoded it."""

    phrase: str
    pixels: torch.Tensor  # [V, H, W, 3] float32 in 0..1 on the CPU: the views of the subject
    mask: torch.Tensor | None = None  # [V, H, W] float32 in 0..1, 1 = subject (a MASK, RGBA alpha or SAM), or None
    clip_vision: Any = None
    clip: Any = None
    vae: Any = None
    query: str = ""  # the text that picks the subject inside the reference; empty = the phrase
    mask_weight: float | None = None  # how strongly a mask query picks the subject; None = the kind's default
    description: str = ""  # a description of the subject, for kinds that condition each reference on its own text

    def __post_init__(self):
        if self.mask_weight is not None:
            check_number("mask_weight", self.mask_weight, 0.0, MAX_MASK_WEIGHT)

    @property
    def query_text(self) -> str:
        return self.query or self.phrase

    @property
    def tokenizer(self):
        """The CLIP's tokenizer, to find the phrase in the prompt (auto routing, token positions)."""
        return getattr(self.clip, "tokenizer", None)

    def required_clip(self, why: str, checkpoint: str):
        """The connected CLIP, or an error saying what it is needed for and where to connect it.

        ``clip`` is optional on Encode Reference (AnyStory does not use it), so every kind that reads
        it asks here. ``why``: what the kind does with it; ``checkpoint``: the base model, e.g. "SDXL".
        """
        if self.clip is None:
            raise SubjectSetupError(missing_clip_message(why, checkpoint))
        return self.clip


def missing_clip_message(why: str, checkpoint: str = "") -> str:
    """Names the unconnected input and the fix in the frontend's words (node titles, socket names)."""
    return (f"{why}, and Encode Reference's 'clip' input is not connected: connect the {checkpoint + ' ' if checkpoint else ''}"
            "checkpoint's CLIP (the CLIP output of Load Checkpoint) to Encode Reference's clip")


@dataclass(frozen=True, eq=False)
class Subject:
    """One entry of the MSP_SUBJECTS list: the reference as Encode Reference made it (never changed afterwards)."""

    reference: Reference

    @property
    def phrase(self) -> str:
        return self.reference.phrase

    @property
    def tokenizer(self):
        return self.reference.tokenizer

    def encoded(self, encoder: SubjectEncoder) -> Any:
        return encoder.encoded(self.reference)


def encodings_of(encoder: SubjectEncoder, subjects: tuple[Subject, ...]) -> list:
    """Every subject's encoding by ``encoder`` (memoised); an error names the subject it is about."""
    encoded = []
    for number, subject in enumerate(subjects, start=1):
        try:
            encoded.append(subject.encoded(encoder))
        except SubjectSetupError as e:
            raise SubjectSetupError(f"subject {number} ({quoted(subject.phrase)}): {e}") from None
    return encoded


class SubjectEncoder(ABC):
    """A loaded subject encoder of one kind: the MSP_SUBJECT_ENCODER socket's payload."""

    kind: ClassVar[str]  # stable id, e.g. "ms_diffusion_sdxl"
    title: ClassVar[str]  # for messages, e.g. "MS-Diffusion (SDXL)"
    base_model: ClassVar[str]  # the base model family it patches, for messages: "SDXL", "SD1.5", "FLUX"
    model_folders: ClassVar[tuple[str, ...]]  # folders under models/ it is loaded from; the first is the documented one
    where_to_get: ClassVar[str] = ""  # which files users download and from where, for a missing-file error
    preview_downscales: ClassVar[tuple[int, ...]] = ()  # latent pixels per token of the layers whose routes are previewed
    learned_routes: ClassVar[bool] = False  # the model decides the routes while sampling: record them when previewed
    capabilities: ClassVar[Capabilities]  # what it needs and uses (see Capabilities)
    builtin_name: ClassVar[str] = ""  # needs_file=False: its stable entry in Load Subject Encoder's list (saved workflows)

    name: str  # the file the user picked, for messages
    patcher: Any = None  # the ModelPatcher that owns the weights (ComfyUI's memory manager loads it)

    @classmethod
    @abstractmethod
    def recognises(cls, keys: Collection[str]) -> bool:
        """True if a checkpoint with these tensor keys is (one file of) this kind's."""

    @classmethod
    @abstractmethod
    def load(cls, path: Path) -> SubjectEncoder:
        """Load the checkpoint at ``path`` (and any partner file it needs from the same folder)."""

    @classmethod
    def builtin(cls) -> SubjectEncoder:
        """The encoder of a kind without a weights file (``capabilities.needs_file`` False)."""
        raise SubjectSetupError(f"{cls.title} is loaded from a file: pick it in Load Subject Encoder")

    def own_settings(self, settings: ApplySettings) -> Mapping[str, Any]:
        """This kind's own settings from ``settings``: checked, and defaulted where not given."""
        return self.capabilities.kind_settings(settings.kind_settings)

    @property
    def encodings(self) -> WeakKeyDictionary:
        """This encoder's memo: reference -> encoding, dropped with the reference (Encode Reference's output).

        An Apply that re-runs (a new scale, a new layout) does not encode the references again,
        and nothing is written into an upstream node's output.
        """
        return self.__dict__.setdefault("_encodings", WeakKeyDictionary())

    def encoded(self, reference: Reference) -> Any:
        """``reference``'s encoding by this encoder, memoised."""
        if reference not in self.encodings:
            self.encodings[reference] = self.encode(reference)
        return self.encodings[reference]

    def with_encoding(self, reference: Reference, encoding: Any) -> Subject:
        """A subject whose encoding by this encoder is already made (the bench and tests feed made-up encodings)."""
        self.encodings[reference] = encoding
        return Subject(reference)

    def with_style_model(self, style_model) -> SubjectEncoder:
        """This encoder with partner weights from a STYLE_MODEL (Load Subject Encoder's optional input)."""
        raise SubjectSetupError(f"{self.title} does not use a style model; disconnect Load Subject Encoder's style_model input")

    @abstractmethod
    def encode(self, reference: Reference) -> Any:
        """The kind's encoding of one subject (features, tokens...); raise SubjectSetupError naming the fix."""

    def binding_notes(self, subjects: tuple[Subject, ...], layout) -> list[str]:
        """Lines Apply shows on its node about how the subjects are bound (e.g. which reference goes in which box)."""
        return []

    @abstractmethod
    def apply(self, model, subjects: tuple[Subject, ...], layout, settings: ApplySettings, recorder=None):
        """A patched clone of ``model`` (never ``model`` itself); ``layout`` may be None where the kind allows it."""
