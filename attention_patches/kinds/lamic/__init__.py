"""LAMIC (layout-aware multi-image composition): reference i stays in box i on in-context models, with no weights file."""
