"""SSR-Encoder files: both released layouts recognised by their keys (ssr_manifest.json), partners found, unsafe files refused."""

import pytest
import torch
from safetensors.torch import save_file

from devkit.pack import pack
from devkit.tiny_sd15 import MANIFEST_ENTRY, manifest_state_dict, save_ssr_files, ssr_manifest

loader = pack("models.ssr_encoder.loader")
safe_load = pack("models.safe_load")
layer_map = pack("attention_patches.kinds.ssr_encoder.layer_map")
SSREncoder = pack("attention_patches.kinds.ssr_encoder").SSREncoder

REAL_SIZE = {}  # every dimension as released


@pytest.fixture(scope="module")
def manifest(golden_set):
    return ssr_manifest(golden_set("ssr_encoder"))


@pytest.fixture(scope="module")
def official_real_size(manifest, tmp_path_factory):
    """pytorch_model.bin + pytorch_model_1.bin with the released keys AND shapes (torch.save state dicts)."""
    return save_ssr_files(tmp_path_factory.mktemp("ssr_official"), manifest, "official", dims=REAL_SIZE)


@pytest.mark.golden
@pytest.mark.parametrize("picked", [0, 1])
def test_official_pair_loads_at_real_size_whichever_file_is_picked(official_real_size, manifest, picked):
    checkpoint = loader.load_ssr_checkpoint(official_real_size[picked])
    assert (checkpoint.aligner_file.name, checkpoint.layers_file.name) == ("pytorch_model.bin", "pytorch_model_1.bin")
    aligner = checkpoint.aligner
    assert (aligner.query_dim, aligner.feature_dim, aligner.to_q.out_features, len(aligner.to_v)) == (768, 1024, 512, 6)
    layers = checkpoint.layers
    assert layers.indices == tuple(sorted(layer_map.SD15_LAYERS))
    for entry in manifest["attn2_layers"]:  # the manifest's diffusers layer -> ComfyUI key table is the pack's
        assert layer_map.SD15_LAYERS[entry["index"]].key == tuple(entry["comfy_key"])
        assert layers.layer(entry["index"]).hidden_size == entry["hidden"] == 320 * layer_map.SD15_LAYERS[entry["index"]].width_mult
    params = sum(p.numel() for p in aligner.parameters()), sum(p.numel() for p in layers.parameters())
    assert params == (manifest["pytorch_model.bin"]["params"], manifest["pytorch_model_1.bin"]["params"])
    saved = torch.load(official_real_size[0], weights_only=True)
    assert torch.equal(aligner.to_v[3].weight, saved["aligner.processor.to_v.3.weight"])
    assert torch.equal(aligner.norm.bias, saved["norm.bias"])


@pytest.mark.golden
@pytest.mark.parametrize("entry", list(MANIFEST_ENTRY.values()))
def test_every_released_file_is_recognised_by_its_keys(manifest, entry):
    keys = manifest[entry]["keys"]
    expected = loader.LAYERS if any("to_k_SSR" in k for k in keys) else loader.ALIGNER
    assert loader.file_role(keys) == expected
    assert loader.file_role({f"module.{k}": None for k in keys}) == expected  # a DDP-saved file
    assert SSREncoder.recognises(frozenset(keys))


def test_foreign_checkpoints_are_not_ssr():
    assert loader.file_role({"1.to_k_ip.weight", "1.to_v_ip.weight"}) is None  # IP-Adapter
    assert loader.file_role({"ms_adapter.1.to_k_ip.weight", "image_proj.proj_in.weight"}) is None  # MS-Diffusion
    assert not SSREncoder.recognises(frozenset({"vision_model.embeddings.class_embedding"}))


@pytest.mark.golden
@pytest.mark.parametrize("layers_name", ["ssr_attentions.safetensors", "ssr_layers.safetensors"])
@pytest.mark.parametrize("picked", [0, 1])
def test_community_pair_loads_from_either_file(manifest, tmp_path, layers_name, picked):
    paths = save_ssr_files(tmp_path, manifest, "community", names=("ssr_aligner.safetensors", layers_name))
    checkpoint = loader.load_ssr_checkpoint(paths[picked])
    assert (checkpoint.aligner_file, checkpoint.layers_file) == paths
    with safe_load.safe_open(str(paths[0]), framework="pt") as f:
        assert torch.equal(checkpoint.aligner.to_out[5].weight, f.get_tensor("to_out.5.weight"))
    assert len(checkpoint.layers) == 16


@pytest.mark.golden
def test_partner_with_any_name_is_found_by_its_keys(manifest, tmp_path):
    aligner, layers = save_ssr_files(tmp_path, manifest, "community", names=("my_aligner.safetensors", "b.safetensors"))
    (tmp_path / "notes.safetensors").write_bytes(b"not a checkpoint")  # skipped, not fatal
    save_file({"x": torch.zeros(1)}, str(tmp_path / "a_other.safetensors"))
    assert loader.load_ssr_checkpoint(layers).aligner_file == aligner


@pytest.mark.golden
@pytest.mark.parametrize("layout_,keep", [("official", 1), ("community", 1), ("community", 0)])
def test_a_file_without_its_partner_names_the_missing_file(manifest, tmp_path, layout_, keep):
    paths = save_ssr_files(tmp_path, manifest, layout_)
    paths[1 - keep].unlink()
    with pytest.raises(loader.SSRFormatError) as error:
        loader.load_ssr_checkpoint(paths[keep])
    message = str(error.value)
    missing = "aligner (pytorch_model.bin or ssr_aligner.safetensors)" if keep == 1 else "attention layers (pytorch_model_1.bin"
    assert missing in message and "same folder" in message and paths[keep].name in message


class Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    torch.save({"aligner.to_q.weight": torch.zeros(2, 2), "payload": Payload()}, path)
    with pytest.raises(loader.SSRFormatError, match="refused"):
        loader.load_ssr_checkpoint(path)


@pytest.mark.golden
def test_mismatched_pair_is_named(manifest, tmp_path):
    save_ssr_files(tmp_path, manifest, "community")
    layers = tmp_path / "ssr_attentions.safetensors"
    shapes = manifest[MANIFEST_ENTRY["ssr_attentions.safetensors"]]["keys"]
    save_file(manifest_state_dict(shapes, 3, {768: 48, 320: 32, 640: 64, 1280: 128}), str(layers))
    with pytest.raises(loader.SSRFormatError, match="not from the same release"):
        loader.load_ssr_checkpoint(tmp_path / "ssr_aligner.safetensors")


def test_names_in_messages_are_bounded_and_escaped(tmp_path):
    """A file name with a non-UTF-8 byte (a lone surrogate in Python) and 200 characters: the message stays loggable."""
    name = "x" * 50 + "\udc80" + "y" * 150 + ".safetensors"
    save_file({"unrelated.weight": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    (tmp_path / "plain.safetensors").rename(tmp_path / name)  # Python writes the byte back (surrogateescape)
    with pytest.raises(loader.SSRFormatError) as raised:
        loader.load_ssr_checkpoint(tmp_path / name)
    message = str(raised.value)
    assert pack("models.safe_text").is_loggable(message) and len(message) < 400, message
    assert "x\\udc80y" in message and "(213 characters)" in message and "rename the file" in message
