"""FastComposer for SD1.5: each person's face fused into the token of the word that names the person."""

from .encoder import FastComposerEncoder

__all__ = ["FastComposerEncoder"]
