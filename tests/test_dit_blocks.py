"""The DiT layer (attention_patches/dit/blocks.py) on ComfyUI's FLUX: with the extra streams off, core's blocks exactly."""

import pytest
import torch

import comfy.patcher_extension
import comfy.sample

from devkit import anystory_tiny as tiny_flux
from devkit.pack import pack

blocks = pack("attention_patches.dit.blocks")
lifecycle = pack("attention_patches.lifecycle")
streams = pack("attention_patches.kinds.anystory.streams")

TEXT = 6


@pytest.fixture(scope="module")
def flux_model():
    return tiny_flux.tiny_flux_model()


def no_streams() -> object:
    """Per-call state of the multi-stream blocks with every extra stream off (no redux, reference or router)."""
    return streams.BlockStreams(2, TEXT, 0, None, None, {})


class StreamsOff:
    """A block method running the pack's multi-stream blocks with nothing extra, on the rows the layer picks."""

    def __init__(self):
        self.blocks_run = 0

    def double(self, block, label, img, txt, vec, pe, state, transformer_options):
        self.blocks_run += 1
        return streams.double_block(block, label, img, txt, vec, pe, state, transformer_options)

    def single(self, block, label, x, vec, pe, state, transformer_options):
        self.blocks_run += 1
        return streams.single_block(block, label, x, vec, pe, state, transformer_options)

    def own_models(self):
        return []

    def wrapper(self, executor, x, timestep, context, y, guidance, ref_latents, control, transformer_options, **kwargs):
        call = blocks.BlockCall(executor.class_obj, blocks.acting_rows(transformer_options, x.shape[0]), context.shape[1],
                                streams=no_streams())
        return blocks.run_with_call(self, call, transformer_options, lambda: executor(
            x, timestep, context, y, guidance, ref_latents, control, transformer_options, **kwargs))


def patched(model, method):
    return lifecycle.patched_clone(model, lifecycle.PatchSet(
        dit=blocks.block_chains(method, model.get_model_object("diffusion_model")),
        wrappers=((comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, method.wrapper),)))


def sample(model, cfg):
    latent = torch.zeros(1, tiny_flux.LATENT_CHANNELS, 8, 8)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    return comfy.sample.sample(model, noise, 3, cfg, "euler", "simple", tiny_flux.flux_conditioning(1, TEXT),
                               tiny_flux.flux_conditioning(2, TEXT), latent, seed=0, disable_pbar=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_blocks_with_the_streams_off_are_bit_identical_to_cores(flux_model, dtype):
    flux = flux_model.get_model_object("diffusion_model")
    generator = torch.Generator().manual_seed(5)
    hidden = flux.hidden_size
    img, txt = (torch.randn(2, n, hidden, generator=generator).to(dtype) for n in (16, TEXT))
    vec = torch.randn(2, hidden, generator=generator).to(dtype)
    ids = torch.cat((torch.zeros(TEXT, 3), torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0),
                                                                      indexing="ij"), -1).reshape(-1, 3)))
    pe = flux.pe_embedder(ids[None])
    double, single = flux.double_blocks[0].to(dtype), flux.single_blocks[0].to(dtype)
    try:
        with torch.no_grad():
            ours = streams.double_block(double, "double_blocks.0", img, txt, vec, pe, no_streams(), {})
            core = double(img=img.clone(), txt=txt.clone(), vec=vec, pe=pe)
            assert all(torch.equal(a, b) for a, b in zip(ours, core))
            x = torch.cat((txt, img), dim=1)
            assert torch.equal(streams.single_block(single, "single_blocks.0", x, vec, pe, no_streams(), {}),
                               single(x.clone(), vec=vec, pe=pe))
    finally:
        double.float(), single.float()


def test_the_layer_runs_the_method_on_every_block_and_leaves_sampling_unchanged(flux_model):
    method = StreamsOff()
    model = patched(flux_model, method)
    assert torch.equal(sample(model, cfg=1.0), sample(flux_model, cfg=1.0))  # one positive chunk: every row is the method's
    depth = len(flux_model.get_model_object("diffusion_model").double_blocks) + len(
        flux_model.get_model_object("diffusion_model").single_blocks)
    assert method.blocks_run == 3 * depth
    # with CFG the negative rows run core's block and the positive ones the method's, merged back in place
    assert torch.allclose(sample(model, cfg=3.0), sample(flux_model, cfg=3.0), atol=1e-5)
    assert blocks.methods_on(model) == [method] and not blocks.methods_on(flux_model)


def test_core_attention_overrides_reach_the_streams(flux_model):
    """Another pack's optimized_attention_override is called for the blocks' attention."""
    seen = []

    def override(attention, *args, **kwargs):
        seen.append(args[0].shape)
        return attention(*args, **kwargs)

    model = patched(flux_model, StreamsOff())
    model.model_options["transformer_options"]["optimized_attention_override"] = override
    sample(model, cfg=1.0)
    assert seen
