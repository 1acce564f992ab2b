"""Tiny stand-ins for an AnyStory FLUX.1-dev workflow: the real architectures (ComfyUI's FLUX, FLUX text
encoders, a 16-channel VAE, SigLIP, Redux) at tiny widths, with seeded random weights."""

from functools import lru_cache

from comfy_api.latest import io

import anystory_tiny

from .fastcomposer_nodes import unet_for
from .incontext_stand_ins import incontext_unet_for, incontext_vae_for

CATEGORY = "multi_subject/testing"


@lru_cache(maxsize=None)
def flux_parts():
    return anystory_tiny.tiny_flux_model(), anystory_tiny.tiny_flux_clip(), anystory_tiny.tiny_flux_vae()


SIGLIP_MARKERS = ("sigclip", "siglip")


@lru_cache(maxsize=None)
def siglip():
    return anystory_tiny.tiny_siglip()


def siglip_for(clip_name: str):
    """The tiny SigLIP (Redux's and AnyStory's CLIP vision), or None when the name is not a SigLIP."""
    return siglip() if any(m in clip_name.lower() for m in SIGLIP_MARKERS) else None


@lru_cache(maxsize=None)
def redux():
    import comfy.ldm.flux.redux
    import comfy.sd

    module = comfy.ldm.flux.redux.ReduxImageEncoder(redux_dim=anystory_tiny.SIGLIP_DIM, txt_in_features=anystory_tiny.TXT_DIM)
    module.load_state_dict(anystory_tiny.tiny_redux_state())
    return comfy.sd.StyleModel(module)


class TinyFluxLoader(io.ComfyNode):
    """Stands in for UNETLoader (flux1-dev; FastComposer's SD1.5 UNet by its name)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="MSPTest_TinyFluxLoader", category=CATEGORY,
                         inputs=[io.String.Input("unet_name", default="tiny-flux"), io.String.Input("weight_dtype", default="default")],
                         outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, unet_name, weight_dtype):
        return io.NodeOutput(unet_for(unet_name) or incontext_unet_for(unet_name) or flux_parts()[0])


class TinyFluxClipLoader(io.ComfyNode):
    """Stands in for DualCLIPLoader (clip_l + t5xxl, type flux)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="MSPTest_TinyFluxClipLoader", category=CATEGORY,
                         inputs=[io.String.Input("clip_name1", default="clip_l"), io.String.Input("clip_name2", default="t5xxl"),
                                 io.String.Input("type", default="flux")],
                         outputs=[io.Clip.Output()])

    @classmethod
    def execute(cls, clip_name1, clip_name2, type):
        return io.NodeOutput(flux_parts()[1])


class TinyFluxVAELoader(io.ComfyNode):
    """Stands in for VAELoader (ae.safetensors)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="MSPTest_TinyFluxVAELoader", category=CATEGORY,
                         inputs=[io.String.Input("vae_name", default="ae")], outputs=[io.Vae.Output()])

    @classmethod
    def execute(cls, vae_name):
        return io.NodeOutput(incontext_vae_for(vae_name) or flux_parts()[2])


class TinyReduxLoader(io.ComfyNode):
    """Stands in for StyleModelLoader (flux1-redux-dev.safetensors)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="MSPTest_TinyReduxLoader", category=CATEGORY,
                         inputs=[io.String.Input("style_model_name", default="flux1-redux-dev")], outputs=[io.StyleModel.Output()])

    @classmethod
    def execute(cls, style_model_name):
        return io.NodeOutput(redux())


FLUX_NODES = [TinyFluxLoader, TinyFluxClipLoader, TinyFluxVAELoader, TinyReduxLoader]
