"""Tensor logic of the pack: layouts and routes, the routed attention and the attn2 patch object."""
