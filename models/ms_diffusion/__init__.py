"""MS-Diffusion (Wang et al., 2024) for SDXL: pure pieces (no ComfyUI imports).

The grounding resampler, the per-layer image projections, and the loader/converter of the
official ``ms_adapter.bin``.
"""
