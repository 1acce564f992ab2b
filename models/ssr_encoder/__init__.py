"""SSR-Encoder (SD1.5): the token-to-patch aligner, the per-layer SSR projections, CLIP pixels, loaders."""
