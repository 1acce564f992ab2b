"""Pure PyTorch modules and state-dict loaders (no ComfyUI imports)."""
