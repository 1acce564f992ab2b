"""MS-Diffusion (SDXL): grounded resampler tokens in every SDXL cross-attention, routed to boxes."""

from .encoder import MSDiffusionSDXL

__all__ = ["MSDiffusionSDXL"]
