"""FastComposer checkpoints: the real key layout and dtypes (tiny tensors), 'module.' prefixes, refused pickles,
the one-time conversion and its round trip."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from devkit.pack import pack

loader = pack("models.fastcomposer.loader")
convert = pack("models.fastcomposer.convert")
encoder_mod = pack("attention_patches.kinds.fastcomposer.encoder")

# real width -> tiny width, so the image encoder and fusion MLP stay a consistent (buildable) model
TINY_WIDTHS = {1024: 16, 4096: 32, 768: 24, 1536: 48, 257: 5}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "int64": torch.int64}


@pytest.fixture(scope="module")
def manifest(golden_set):
    fc = golden_set("fastcomposer")
    return json.loads((fc.path / "fastcomposer_manifest.json").read_text())


def tiny_tensor(key: str, entry: dict, generator: torch.Generator) -> torch.Tensor:
    if key.startswith(("image_encoder.", "postfuse_module.")):
        shape = [TINY_WIDTHS.get(d, d) for d in entry["shape"]]
    else:  # the UNet, text encoder and VAE are only copied or dropped: any small shape keeps the layout
        shape = [min(d, 3) for d in entry["shape"]]
    dtype = DTYPES[entry["dtype"]]
    if dtype == torch.int64:
        return torch.arange(shape[-1]).expand(shape).clone()
    return (torch.randn(shape, generator=generator) * 0.05).to(dtype)


@pytest.fixture(scope="module")
def official_bin(manifest, tmp_path_factory):
    """A pytorch_model.bin with every key and stored dtype of the real file (1538 keys), tiny tensors."""
    generator = torch.Generator().manual_seed(0)
    state = {key: tiny_tensor(key, entry, generator) for key, entry in manifest["keys"].items()}
    path = tmp_path_factory.mktemp("fastcomposer") / "pytorch_model.bin"
    torch.save(state, path)
    return path, state


@pytest.mark.golden
def test_official_layout_loads(official_bin, manifest):
    path, state = official_bin
    assert len(state) == manifest["total_keys"]
    assert encoder_mod.FastComposerEncoder.recognises(state.keys())
    weights = loader.load_weights(path)
    assert set(weights.image_encoder) == {k[len("image_encoder."):] for k in state if k.startswith("image_encoder.")} - {
        loader.POSITION_IDS}
    assert weights.vision["num_hidden_layers"] == 24 and weights.vision["patch_size"] == 14
    assert weights.vision["projection_dim"] == weights.postfuse.embed_dim == TINY_WIDTHS[768]
    assert torch.equal(weights.unet_fingerprint, state["unet.conv_in.weight"].flatten()[: loader.FINGERPRINT_SIZE].float())
    encoder = encoder_mod.FastComposerEncoder.load(path)
    embedding = encoder.object_embeddings(torch.rand(2, 20, 12, 3))
    assert embedding.shape == (2, TINY_WIDTHS[768]) and torch.isfinite(embedding).all()


@pytest.mark.golden
def test_ddp_module_prefix_is_removed(official_bin, tmp_path):
    _path, state = official_bin
    prefixed = tmp_path / "pytorch_model.bin"
    torch.save({f"module.{k}": v for k, v in state.items()}, prefixed)
    assert encoder_mod.FastComposerEncoder.recognises([f"module.{k}" for k in state])
    weights = loader.load_weights(prefixed)
    assert torch.equal(weights.image_encoder["visual_projection.weight"], state["image_encoder.visual_projection.weight"])


@pytest.mark.golden
def test_conversion_round_trip_keeps_stored_dtypes(official_bin, manifest, tmp_path):
    path, state = official_bin
    written = convert.convert(path, tmp_path)
    with safe_open(str(written["encoder"]), framework="pt") as f:
        keys = set(f.keys())
        assert f.metadata()["format"] == loader.FORMAT_TAG
        for key in keys - {loader.FINGERPRINT_KEY}:
            tensor = f.get_tensor(key)
            assert torch.equal(tensor, state[key]) and tensor.dtype == DTYPES[manifest["keys"][key]["dtype"]], key
    expected = {k for k in state if k.startswith(("image_encoder.", "postfuse_module."))} - {f"image_encoder.{loader.POSITION_IDS}"}
    assert keys == expected | {loader.FINGERPRINT_KEY}
    assert not any(k.startswith(("text_encoder.", "vae.", "unet.")) for k in keys)
    with safe_open(str(written["unet"]), framework="pt") as f:
        unet_keys = set(f.keys())
        assert unet_keys == {k[len("unet."):] for k in state if k.startswith("unet.")}
        for key in unet_keys:
            assert torch.equal(f.get_tensor(key), state[f"unet.{key}"].half())
    original, converted = loader.load_weights(path), loader.load_weights(written["encoder"])
    assert converted.vision == original.vision
    assert torch.equal(converted.unet_fingerprint, original.unet_fingerprint)
    for key, tensor in original.image_encoder.items():
        assert torch.equal(converted.image_encoder[key], tensor)
    for key, tensor in original.postfuse.state_dict().items():
        assert torch.equal(converted.postfuse.state_dict()[key], tensor)
    assert convert.main([str(path), str(tmp_path / "cli"), "--unet-fp32"]) == 0
    with safe_open(str(tmp_path / "cli" / convert.UNET_FILE), framework="pt") as f:
        assert f.get_tensor("conv_in.weight").dtype == torch.float32


@pytest.mark.golden
def test_real_unet_layout_is_detected_as_sd15(manifest):
    """The UNet keys of the real file (meta tensors of the manifest's shapes) are what ComfyUI detects as SD1.5."""
    import comfy.model_detection
    import comfy.supported_models

    unet = {k[len("unet."):]: torch.empty(e["shape"], device="meta") for k, e in manifest["keys"].items() if k.startswith("unet.")}
    config = comfy.model_detection.model_config_from_diffusers_unet(unet)
    assert isinstance(config, comfy.supported_models.SD15)


class Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    torch.save({"postfuse_module.layer_norm.weight": torch.ones(2), "evil": Payload()}, path)
    with pytest.raises(loader.FastComposerFormatError, match="refused"):
        loader.load_weights(path)
    with pytest.raises(loader.FastComposerFormatError, match="refused"):
        convert.convert(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_foreign_file_is_a_named_error(tmp_path):
    path = tmp_path / "other.bin"
    torch.save({"model.diffusion_model.x": torch.ones(1)}, path)
    with pytest.raises(loader.FastComposerFormatError, match="not a FastComposer checkpoint"):
        loader.load_weights(path)
    assert convert.main([str(path)]) == 1


def test_truncated_file_is_a_named_error(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    torch.save({"postfuse_module.layer_norm.weight": torch.ones(4)}, path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(loader.FastComposerFormatError, match="truncated or corrupt"):
        loader.load_weights(path)


@pytest.mark.golden
def test_load_subject_encoder_node_lists_and_loads_the_official_bin(official_bin, tmp_path):
    """The official pytorch_model.bin in models/fastcomposer: listed (beside other kinds' files) and loaded as FastComposer."""
    import shutil

    import folder_paths

    nodes = pack("nodes")
    path, state = official_bin
    folder = tmp_path / "fastcomposer"
    folder.mkdir()
    shutil.copy(path, folder / "pytorch_model.bin")
    folder_paths.add_model_folder_path("fastcomposer", str(folder))
    choices = nodes.LoadSubjectEncoder.define_schema().inputs[0].options
    listed = next(c for c in choices if c.endswith("pytorch_model.bin") and nodes.LoadSubjectEncoder.validate_inputs(c) is True
                  and str(folder) in pack("nodes.paths").encoder_path(c))
    encoder = nodes.LoadSubjectEncoder.execute(encoder_name=listed).args[0]
    assert encoder.kind == "fastcomposer_sd15"
    assert torch.equal(encoder.postfuse.state_dict()["layer_norm.weight"], state["postfuse_module.layer_norm.weight"])
