"""Kinds of subject encoder: the interface (``base``), the registry (``registry``) and one folder per kind."""
