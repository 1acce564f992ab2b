"""The DiT joint-attention layer (FLUX, Qwen-Image): generic parts, never naming a kind.

``blocks``: block replacement through ``patches_replace["dit"]``, the DIFFUSION_MODEL wrapper
that leaves one model call's state for the blocks, the rows a method acts on and the latent
token layout; a kind brings only its per-block code (:class:`blocks.BlockMethod`). The attention
override with a per-token class mask, the token layout of one call and the RoPE id patches are in
``masked_attention``, ``token_layout`` and ``ids``.
"""
