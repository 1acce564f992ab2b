"""The UNet cross-attention (attn2) layer, written once for every kind that patches it.

``blocks``: where the attn2 modules are, the patch class every kind's attn2 patch derives from
(one per block, holding every Apply's subjects, chained with other packs' patches and their
``.add`` callbacks) and the chain that installs it through :mod:`..lifecycle`. Row selection and
the sigma window are in :mod:`..model_call`; box routes in :mod:`..routing`.
"""
