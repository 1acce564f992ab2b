"""Multi-subject personalization for ComfyUI: MS-Diffusion patched into ComfyUI's own SDXL model."""

from .nodes import comfy_entrypoint

WEB_DIRECTORY = "./web"

__all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
