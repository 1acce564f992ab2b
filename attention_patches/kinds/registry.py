"""The registry of subject-encoder kinds: which kind a checkpoint is, from its keys.

Adding a kind: a folder beside ``ms_diffusion/`` with a :class:`SubjectEncoder` subclass, and
one entry in ``KINDS``. Nothing else in the pack names a kind.
"""

from __future__ import annotations

import re
from pathlib import Path

from ...models.safe_load import CheckpointError, foreign_format, read_keys
from ...models.safe_text import quoted
from .anystory.encoder import AnyStoryEncoder
from .base import SubjectEncoder
from .fastcomposer import FastComposerEncoder
from .ms_diffusion import MSDiffusionSDXL
from .ssr_encoder import SSREncoder

KINDS: tuple[type[SubjectEncoder], ...] = (MSDiffusionSDXL, SSREncoder, AnyStoryEncoder, FastComposerEncoder)


class UnknownEncoderError(CheckpointError):
    """A file no kind recognises; the message lists what the pack can load."""


def model_folders() -> tuple[str, ...]:
    """Every folder under models/ a subject encoder may be loaded from, in registry order."""
    return tuple(dict.fromkeys(folder for kind in KINDS for folder in kind.model_folders))


def kinds_for_file(listed: str) -> tuple[type[SubjectEncoder], ...]:
    """The kinds a Load Subject Encoder choice belongs to, told from its name alone (the file may be missing).

    ``folder/name`` names its folder's kinds; a bare name, the kinds whose download hint names that
    file (``pytorch_model.bin`` is both SSR-Encoder's and FastComposer's). Empty when the name says nothing.
    """
    folder, separator, name = listed.rpartition("/")
    if separator:
        return tuple(kind for kind in KINDS if folder in kind.model_folders)
    if not name:
        return ()
    named = re.compile(rf"(?<![\w./-]){re.escape(name)}(?!\.?[\w-])")
    return tuple(kind for kind in KINDS if kind.where_to_get and named.search(kind.where_to_get))


def kind_of(path: str | Path) -> type[SubjectEncoder]:
    """The kind whose checkpoint ``path`` is, recognised by its tensor keys."""
    path = Path(path)
    keys = read_keys(path, UnknownEncoderError)
    for kind in KINDS:
        if kind.recognises(keys):
            return kind
    known = "; ".join(f"{kind.title} in models/{kind.model_folders[0]}" for kind in KINDS)
    what = foreign_format(keys)
    raise UnknownEncoderError(f"{quoted(path.name)} is {what or 'not a subject encoder'}; this pack loads: {known}.")


def load_subject_encoder(path: str | Path) -> SubjectEncoder:
    return kind_of(path).load(Path(path))
