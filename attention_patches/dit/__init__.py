"""The DiT joint-attention layer (FLUX-style double/single blocks), written once for every kind that patches it.

``blocks``: block replacement through ``patches_replace["dit"]``, the DIFFUSION_MODEL wrapper
that leaves one model call's state for the blocks, the rows a method acts on and the latent
token layout. A kind brings only its per-block code (:class:`blocks.BlockMethod`).
"""
