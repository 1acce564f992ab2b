"""LAMIC (Layout-Aware Multi-Image Composition, arXiv 2508.00477): the pure math.

Text groups and their spans (``text``), regions on the target token grid (``regions``), group
membership, the group rule table and the token-level mask as per-token classes (``groups``), the
stage rule (``schedule``) and reference sizes and tokens (``references``). Every official quirk is
the default; where the pack goes further there is an explicit switch. No ComfyUI imports except
``comfy.utils`` (the Lanczos resize the official pixels are reproduced with) inside a function.
"""
