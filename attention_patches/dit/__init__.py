"""Joint-attention layer of DiT models (FLUX, Qwen-Image): generic parts, never naming a kind."""
