"""The registry of subject-encoder kinds: which kind a checkpoint is, from its keys.

Adding a kind: a folder beside ``ms_diffusion/`` with a :class:`SubjectEncoder` subclass, and
one entry in ``KINDS``. Nothing else in the pack names a kind. A kind without a weights file
(``capabilities.needs_file`` False) is listed by Load Subject Encoder under its ``builtin_name``.
"""

from __future__ import annotations

import re
from pathlib import Path

from ...models.safe_load import CheckpointError, foreign_format, read_keys
from ...models.safe_text import quoted
from .anystory.encoder import AnyStoryEncoder
from .base import SubjectEncoder
from .fastcomposer import FastComposerEncoder
from .lamic.encoder import LamicEncoder
from .ms_diffusion import MSDiffusionSDXL
from .ssr_encoder import SSREncoder

KINDS: tuple[type[SubjectEncoder], ...] = (MSDiffusionSDXL, SSREncoder, AnyStoryEncoder, FastComposerEncoder, LamicEncoder)


class UnknownEncoderError(CheckpointError):
    """A file no kind recognises; the message lists what the pack can load."""


def file_kinds() -> tuple[type[SubjectEncoder], ...]:
    """The kinds loaded from a weights file."""
    return tuple(kind for kind in KINDS if kind.capabilities.needs_file)


def builtin_name(kind: type[SubjectEncoder]) -> str:
    """Load Subject Encoder's entry for a kind without a weights file (stable: saved workflows store it)."""
    return kind.builtin_name or f"{kind.title} (no weights file)"


def builtin_kinds() -> dict[str, type[SubjectEncoder]]:
    """{Load Subject Encoder entry: kind} for every kind built without a weights file."""
    return {builtin_name(kind): kind for kind in KINDS if not kind.capabilities.needs_file}


def model_folders() -> tuple[str, ...]:
    """Every folder under models/ a subject encoder may be loaded from, in registry order."""
    return tuple(dict.fromkeys(folder for kind in file_kinds() for folder in kind.model_folders))


def kinds_for_file(listed: str) -> tuple[type[SubjectEncoder], ...]:
    """The kinds a Load Subject Encoder choice belongs to, told from its name alone (the file may be missing).

    ``folder/name`` names its folder's kinds; a bare name, the kinds whose download hint names that
    file (``pytorch_model.bin`` is both SSR-Encoder's and FastComposer's). Empty when the name says nothing.
    """
    folder, separator, name = listed.rpartition("/")
    if separator:
        return tuple(kind for kind in file_kinds() if folder in kind.model_folders)
    if not name:
        return ()
    named = re.compile(rf"(?<![\w./-]){re.escape(name)}(?!\.?[\w-])")
    return tuple(kind for kind in file_kinds() if kind.where_to_get and named.search(kind.where_to_get))


def kind_of(path: str | Path) -> type[SubjectEncoder]:
    """The kind whose checkpoint ``path`` is, recognised by its tensor keys."""
    path = Path(path)
    keys = read_keys(path, UnknownEncoderError)
    for kind in file_kinds():
        if kind.recognises(keys):
            return kind
    known = "; ".join(f"{kind.title} in models/{kind.model_folders[0]}" for kind in file_kinds())
    what = foreign_format(keys)
    raise UnknownEncoderError(f"{quoted(path.name)} is {what or 'not a subject encoder'}; this pack loads: {known}.")


def load_subject_encoder(path: str | Path) -> SubjectEncoder:
    return kind_of(path).load(Path(path))
