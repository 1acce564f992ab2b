"""Multi-subject personalization for ComfyUI: several methods (one kind each: MS-Diffusion, SSR-Encoder,
FastComposer, AnyStory, LAMIC, ...) behind the same nodes, patched into ComfyUI's own models."""

from .nodes import comfy_entrypoint

WEB_DIRECTORY = "./web"

__all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
