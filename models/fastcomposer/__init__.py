"""FastComposer (Xiao et al., 2023) for SD1.5: pure pieces (no ComfyUI imports).

Reference preprocessing, the fusion MLP, the official token and delayed-switch rules, and the
loader/converter of the official single ``pytorch_model.bin``.
"""
