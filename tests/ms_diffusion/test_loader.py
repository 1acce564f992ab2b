"""Loading ms_adapter.bin / .safetensors: the real key layout, refusal of unsafe or foreign files, conversion."""

import json
import pathlib

import pytest
import torch
from safetensors.torch import save_file

import folder_paths

from devkit.pack import pack

loader = pack("models.ms_diffusion.loader")
convert = pack("models.ms_diffusion.convert")
layer_map = pack("attention_patches.kinds.ms_diffusion.layer_map")
subject_encoder = pack("attention_patches.kinds.registry")
nodes = pack("nodes")


@pytest.fixture(scope="module")
def manifest_checkpoint(golden, tmp_path_factory):
    """A random-weight ms_adapter.bin with exactly the real file's keys and shapes, in both formats."""
    manifest = json.loads((golden.path / "ms_adapter_sdxl_manifest.json").read_text())
    generator = torch.Generator().manual_seed(0)

    def build(node):
        if isinstance(node, dict):
            return {k: build(v) for k, v in node.items()}
        return torch.randn(node, generator=generator) * 0.02

    state = build(manifest)
    folder = tmp_path_factory.mktemp("manifest")
    torch.save(state, folder / "ms_adapter.bin")
    flat = {f"{top}.{k}": v for top in ("image_proj", "ms_adapter") for k, v in state[top].items()}
    flat["dummy_image_tokens"] = state["dummy_image_tokens"]
    save_file(flat, str(folder / "ms_adapter.safetensors"))
    return folder, flat


@pytest.mark.golden
@pytest.mark.parametrize("file_name", ["ms_adapter.bin", "ms_adapter.safetensors"])
def test_official_layout_loads_with_the_sdxl_config(manifest_checkpoint, file_name):
    folder, flat = manifest_checkpoint
    encoder = subject_encoder.load_subject_encoder(folder / file_name)
    c = encoder.module.config
    assert (c.dim, c.depth, c.heads, c.dim_head, c.num_queries, c.embedding_dim, c.output_dim, c.ff_mult, c.phrase_dim,
            c.fourier_freqs) == (1280, 4, 20, 64, 16, 1664, 2048, 4, 768, 8)
    assert encoder.module.layer_indices == list(layer_map.SDXL_ADAPTER_INDICES)
    assert set(encoder.layer_keys.values()) == set(layer_map.SDXL_CROSS_ATTENTION_KEYS)
    widths = {key: encoder.module.layer(i).hidden_size for i, key in encoder.layer_keys.items()}
    assert widths[("input", 4, 0)] == 640 and widths[("middle", 0, 9)] == 1280 and widths[("output", 5, 1)] == 640
    state = encoder.module.state_dict()
    for key in ("image_proj.latent_proj.2.weight", "ms_adapter.139.to_v_ip.weight", "image_proj.layers.3.1.3.weight"):
        assert torch.equal(state[key], flat[key])
    assert encoder.patcher.model is encoder.module


@pytest.mark.golden
def test_conversion_round_trips_and_halves_in_fp16(manifest_checkpoint, tmp_path):
    folder, flat = manifest_checkpoint
    full = convert.convert(folder / "ms_adapter.bin", tmp_path / "converted.safetensors")
    half = convert.convert(folder / "ms_adapter.bin", tmp_path / "converted.fp16.safetensors", fp16=True)
    converted, metadata = loader.read_checkpoint(full)
    assert converted.keys() == flat.keys() and all(torch.equal(converted[k], flat[k]) for k in flat)
    assert metadata["format"] == "ms_diffusion"
    halved, _ = loader.read_checkpoint(half)
    assert halved["ms_adapter.1.to_k_ip.weight"].dtype == torch.float16
    assert half.stat().st_size < full.stat().st_size * 0.55
    assert loader.build_encoder(halved).config == loader.build_encoder(converted).config


class CodePayload:
    """Unpickling this would create a file: a stand-in for arbitrary code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_pickle_with_code_is_refused(tiny, tmp_path):
    state = tiny.tiny_subject_encoder_state_dict()
    marker = tmp_path / "payload-ran"
    state["image_proj"]["extra"] = CodePayload(marker)
    path = tmp_path / "evil.bin"
    torch.save(state, path)
    with pytest.raises(loader.SubjectEncoderFormatError, match="refused.*weights_only"):
        loader.load_encoder(path)
    assert not marker.exists()


def test_tiny_bin_and_safetensors_load_identically(tiny, tmp_path):
    a = loader.load_encoder(tiny.save_subject_encoder(tmp_path / "a.bin"))
    b = loader.load_encoder(tiny.save_subject_encoder(tmp_path / "b.safetensors"))
    assert a.config == b.config
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("prefix, named", [
    ("ip_adapter.", "IP-Adapter"),
    ("model.diffusion_model.", "Stable Diffusion checkpoint"),
    ("vision_model.", "CLIP-Vision"),
    ("something.else.", "not an MS-Diffusion checkpoint"),
])
def test_foreign_files_are_named(tmp_path, prefix, named):
    path = tmp_path / "foreign.safetensors"
    save_file({f"{prefix}weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(loader.SubjectEncoderFormatError, match=named):
        loader.load_encoder(path)


def test_truncated_files_are_named(tiny, tmp_path):
    for name in ("cut.safetensors", "cut.bin"):
        path = tiny.save_subject_encoder(tmp_path / name)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(loader.SubjectEncoderFormatError, match="truncated"):
            loader.load_encoder(path)


def test_incomplete_and_inconsistent_files_are_named(tiny, tmp_path):
    state = tiny.tiny_subject_encoder_state_dict()
    del state["ms_adapter"]["7.to_v_ip.weight"]
    torch.save(state, tmp_path / "incomplete.bin")
    with pytest.raises(loader.SubjectEncoderFormatError, match="layer 7 .* needs to_k_ip and to_v_ip"):
        loader.load_encoder(tmp_path / "incomplete.bin")
    state = tiny.tiny_subject_encoder_state_dict()
    del state["image_proj"]["proj_out.weight"]
    torch.save(state, tmp_path / "no_proj_out.bin")
    with pytest.raises(loader.SubjectEncoderFormatError, match="lacks image_proj.proj_out.weight"):
        loader.load_encoder(tmp_path / "no_proj_out.bin")
    torch.save([torch.zeros(1)], tmp_path / "list.bin")
    with pytest.raises(loader.SubjectEncoderFormatError, match="not a dict of tensors"):
        loader.load_encoder(tmp_path / "list.bin")
    (tmp_path / "weights.onnx").write_bytes(b"x")
    with pytest.raises(loader.SubjectEncoderFormatError, match="unsupported file type"):
        loader.load_encoder(tmp_path / "weights.onnx")


def test_load_subject_encoder_node_reads_the_registered_folder(tiny, tmp_path):
    folder = tmp_path / "msdiffusion"
    tiny.save_subject_encoder(folder / "tiny.safetensors")
    folder_paths.add_model_folder_path("msdiffusion", str(folder))
    assert "tiny.safetensors" in folder_paths.get_filename_list("msdiffusion")
    schema = nodes.LoadSubjectEncoder.define_schema()
    assert "tiny.safetensors" in schema.inputs[0].options
    encoder = nodes.LoadSubjectEncoder.execute(encoder_name="tiny.safetensors").args[0]
    assert encoder.module.config.embedding_dim == tiny.VISION_WIDTH
