"""SSR-Encoder for SD1.5: its kind, layer map and ComfyUI-side encoding."""

from .encoder import SSREncoder

__all__ = ["SSREncoder"]
