"""Files in the model folders that are not what they claim: refused by name, before their tensors are read."""

import os
import re
import subprocess
import sys
import zipfile

import pytest
import torch

from msp_package import PACK_ROOT, pack

loader = pack("models.ms_diffusion.loader")
safe_load = pack("models.safe_load")
registry = pack("attention_patches.kinds.registry")

DECLARED_ELEMENTS = 2**27  # a 512 MiB float32 tensor, deflated to about 0.5 MB


def write_zip_bomb(path, elements: int = DECLARED_ELEMENTS):
    """A torch.save zip whose one tensor declares ``elements`` float32 zeros, stored deflated."""
    torch.save({"image_proj.latents": torch.zeros(4)}, path)
    with zipfile.ZipFile(path) as archive:
        items = [(info, archive.read(info.filename)) for info in archive.infolist()]
    declared = b"J" + elements.to_bytes(4, "little")
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for info, data in items:
            if info.filename.endswith("/data.pkl"):  # the storage size and the tensor's shape
                archive.writestr(info.filename, data.replace(b"K\x04t", declared + b"t").replace(b"K\x04\x85", declared + b"\x85"))
            elif "/data/" in info.filename:
                with archive.open(info.filename, "w", force_zip64=True) as f:
                    zeros = bytes(2**24)
                    for _ in range(elements * 4 // len(zeros)):
                        f.write(zeros)
            else:
                archive.writestr(info.filename, data)
    return path


def test_a_small_compressed_bin_declaring_a_huge_tensor_is_refused_without_reading_it(tmp_path):
    bomb = write_zip_bomb(tmp_path / "ms_adapter.bin")
    assert bomb.stat().st_size < 4 * 2**20
    script = (
        "import resource, sys\n"
        f"sys.path.insert(0, {str(PACK_ROOT / 'tests')!r})\n"
        "from comfy_runtime import import_comfy\nimport_comfy()\n"
        "from msp_package import pack\nloader = pack('models.ms_diffusion.loader')\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n    loader.load_encoder(sys.argv[1])\nexcept loader.SubjectEncoderFormatError as e:\n    print('REFUSED', e)\n"
        "print('GROWTH_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(bomb)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if line.startswith(("REFUSED", "GROWTH_KB")))
    assert "compressed" in lines.get("REFUSED", ""), result.stdout + result.stderr[-3000:]
    assert int(lines["GROWTH_KB"]) < 64 * 1024  # the 512 MiB were never allocated


def test_foreign_pickles_are_recognised_from_their_keys_before_their_tensors_are_read(tmp_path):
    path = tmp_path / "model.bin"
    torch.save({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8)}, path)
    assert safe_load.read_keys(path) == {"model.diffusion_model.input_blocks.0.0.weight"}
    assert safe_load.read_structure(path)["model.diffusion_model.input_blocks.0.0.weight"].shape == (8,)
    with pytest.raises(loader.SubjectEncoderFormatError, match="Stable Diffusion checkpoint"):
        loader.load_encoder(path)


@pytest.mark.parametrize("target", ["text file", "folder", "device", "empty file", "zip archive"])
def test_a_symlink_to_something_that_is_not_a_model_is_named(tmp_path, target):
    text = tmp_path / "notes.txt"
    text.write_text("root:x:0:0:root:/root:/bin/bash\n")
    empty = tmp_path / "empty"
    empty.touch()
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("photo.txt", "not a tensor")
    targets = {"text file": text, "folder": tmp_path, "device": "/dev/null", "empty file": empty, "zip archive": archive}
    link = tmp_path / "ms_adapter.bin"
    link.symlink_to(targets[target])
    for load, refusal in ((loader.load_encoder, loader.SubjectEncoderFormatError),
                          (registry.load_subject_encoder, registry.UnknownEncoderError)):  # what Load Subject Encoder calls
        with pytest.raises(refusal) as error:
            load(link)
        assert "'ms_adapter.bin'" in str(error.value)
        assert any(word in str(error.value) for word in ("not a PyTorch checkpoint", "not a model file", "empty")), str(error.value)


def test_a_structure_with_code_is_refused_before_loading(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("true",))

    path = tmp_path / "evil.bin"
    torch.save({"image_proj.x": torch.zeros(1), "payload": Payload()}, path)
    with pytest.raises(safe_load.CheckpointError, match="was refused"):
        safe_load.read_structure(path)


def test_real_checkpoints_still_load(tiny, tmp_path):
    for name in ("tiny.bin", "tiny.safetensors"):
        path = tiny.save_subject_encoder(tmp_path / name)
        assert any(k.startswith("ms_adapter.") for k in safe_load.read_keys(path))
        assert loader.load_encoder(path).layer_indices




def test_a_structure_of_shared_dicts_nesting_exponentially_is_refused(tmp_path):
    level = {"image_proj.x": torch.zeros(1)}
    for _ in range(40):  # 2**40 keys once flattened, a few hundred bytes pickled
        level = {"a": level, "b": level}
    path = tmp_path / "nested.bin"
    torch.save(level, path)
    with pytest.raises(safe_load.CheckpointError, match="more than 1000000 entries"):
        safe_load.read_keys(path)


@pytest.mark.parametrize("read", ["read_keys", "read_tensors"])
def test_a_safetensors_path_that_is_not_utf8_is_named_for_renaming(tmp_path, read):
    """The safetensors library opens such a path as another one; the file would look missing or corrupt."""
    from safetensors.torch import save_file

    save_file({"image_proj.latents": torch.zeros(4)}, str(tmp_path / "plain.safetensors"))
    name = tmp_path / "dog\udcff.safetensors"  # byte 0xff, as Python names it (surrogateescape)
    (tmp_path / "plain.safetensors").rename(name)
    with pytest.raises(safe_load.CheckpointError, match=r"'dog\\udcff\.safetensors': its path has bytes that are not UTF-8.*rename"):
        getattr(safe_load, read)(name)


# --- values and numbers a file declares: named at load, never a black image or a raw error at Apply -----------------

def _rewrite(path, change, metadata=None):
    """Rewrite ``path`` (a kind's tiny file) with ``change(flat)`` applied to its tensors (read without the value check)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            flat, meta = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
        save_file(change(flat), str(path), metadata={**meta, **(metadata or {})} or None)
    else:
        save = torch.load(str(path), weights_only=True)
        torch.save(change(safe_load.flatten(save)), str(path))
    return path


def _tiny_file(kind, folder):
    """The tiny stand-in file of ``kind`` written into ``folder`` (SSR-Encoder: both halves; the aligner returned)."""
    import anystory_tiny
    import tiny_models
    import tiny_sd15
    from tiny_sd15_fastcomposer import save_fastcomposer

    if kind == "ms_diffusion":
        return tiny_models.save_subject_encoder(folder / "ms_adapter.safetensors")
    if kind == "ssr_encoder":
        return tiny_sd15.save_ssr_files(folder, tiny_sd15.ssr_manifest(), "community")[0]
    if kind == "fastcomposer":
        return save_fastcomposer(folder / "fastcomposer_encoder.safetensors")
    path = folder / "anystory_flux.bin"
    torch.save(anystory_tiny.tiny_anystory(base_redux=False), path)
    return path


VALUES = {"nan": (float("nan"), "NaN"), "inf": (float("inf"), "infinite values"), "huge": (3e5, "far beyond what trained weights hold")}


@pytest.mark.parametrize("value", list(VALUES))
@pytest.mark.parametrize("kind", ["ms_diffusion", "ssr_encoder", "fastcomposer", "anystory"])
def test_non_finite_or_absurd_weights_are_named_at_load(tmp_path, kind, value):
    number, named = VALUES[value]
    path = _tiny_file(kind, tmp_path)
    target = {}

    def poison(flat):
        key = sorted(k for k, t in flat.items() if t.is_floating_point() and t.numel() > 4)[len(flat) // 3]
        flat[key] = flat[key].clone()
        flat[key].view(-1)[3] = number
        target["key"] = key
        return flat

    _rewrite(path, poison)
    with pytest.raises(safe_load.CheckpointError) as error:
        registry.load_subject_encoder(path)
    assert named in str(error.value) and target["key"] in str(error.value) and path.name in str(error.value)


def test_the_value_check_reads_in_bounded_chunks(monkeypatch):
    """A tensor larger than a chunk is checked piece by piece: a NaN in the last chunk is found, no full float copy made."""
    monkeypatch.setattr(safe_load, "CHECK_CHUNK", 1000)
    tensor = torch.zeros(4096, dtype=torch.float16)
    assert safe_load.check_values("w", tensor, "f", safe_load.CheckpointError) is tensor
    tensor[-1] = float("nan")
    with pytest.raises(safe_load.CheckpointError, match="'w' holds NaN"):
        safe_load.check_values("w", tensor, "f", safe_load.CheckpointError)


def test_an_int8_ms_diffusion_file_is_named_as_quantised(tmp_path):
    path = _rewrite(_tiny_file("ms_diffusion", tmp_path), lambda flat: {k: (t * 100).to(torch.int8) for k, t in flat.items()})
    with pytest.raises(loader.SubjectEncoderFormatError, match="holds int8 weights .*a quantised file"):
        registry.load_subject_encoder(path)


@pytest.mark.parametrize("metadata, named", [
    ({"resampler_dim_head": "-64"}, "resampler_dim_head = '-64'"), ({"resampler_dim_head": "0"}, "resampler_dim_head = '0'"),
    ({"resampler_dim_head": "9" * 30}, "resampler_dim_head"), ({"resampler_dim_head": "48"}, "does not divide"),
    ({"fourier_freqs": "-3"}, "fourier_freqs = '-3'"), ({"fourier_freqs": "3000"}, "Fourier"),
    ({"fourier_freqs": "two"}, "fourier_freqs = 'two'"),
])
def test_ms_diffusion_numbers_a_file_declares_are_checked_at_load(tmp_path, metadata, named):
    path = _rewrite(_tiny_file("ms_diffusion", tmp_path), lambda flat: flat, metadata)
    with pytest.raises(loader.SubjectEncoderFormatError, match=re.escape(named)):
        registry.load_subject_encoder(path)


def test_ms_diffusion_resampler_layers_out_of_sequence_are_named(tmp_path):
    def renumber(flat):
        return {k.replace("image_proj.layers.1.", "image_proj.layers.7."): t for k, t in flat.items()}

    with pytest.raises(loader.SubjectEncoderFormatError, match="numbered"):
        registry.load_subject_encoder(_rewrite(_tiny_file("ms_diffusion", tmp_path), renumber))


def test_ssr_layer_indices_sd15_lacks_are_named_at_load(tmp_path):
    aligner = _tiny_file("ssr_encoder", tmp_path)
    layers = tmp_path / "ssr_attentions.safetensors"
    _rewrite(layers, lambda flat: {k.replace("1.to_", "99.to_", 1) if k.startswith("1.") else k: t for k, t in flat.items()})
    with pytest.raises(safe_load.CheckpointError, match=r"attention layers \[99\], which SD1.5's UNet does not have"):
        registry.load_subject_encoder(aligner)


@pytest.mark.parametrize("heads", ["-2", "0", "5", "100000"])
def test_fastcomposer_declared_head_count_is_checked_at_load(tmp_path, heads):
    path = _rewrite(_tiny_file("fastcomposer", tmp_path), lambda flat: flat, {"vision_heads": heads})
    with pytest.raises(safe_load.CheckpointError, match="vision_heads"):
        registry.load_subject_encoder(path)


def _anystory_case(case):
    def change(flat):
        if case == "wrong-shaped tensor":
            flat["redux.redux_down_lora_A.weight"] = torch.zeros(8, 143)  # 3 x 48 (T5) wide everywhere else
        elif case == "routing bias of the wrong length":
            key = "router.transformer.single_transformer_blocks.1.attn.processor.to_k_routing_map_lora_B.bias"
            flat[key] = flat[key][:-1].clone()
        elif case == "LoRA ranks that disagree":
            key = "ref.transformer.transformer_blocks.0.attn.to_q.lora_A.weight"
            flat[key] = flat[key][:-1].clone()
        elif case == "block the routing maps lack":
            flat = {k.replace("transformer_blocks.1.", "transformer_blocks.5.") if "routing_map" in k else k: t for k, t in flat.items()}
        return flat
    return change


@pytest.mark.parametrize("case, named", [
    ("wrong-shaped tensor", r"'redux.redux_down_lora_A.weight' has shape \[8, 143\]"),
    ("routing bias of the wrong length", r"to_k.*bias.*|routing map \(key\).lora_B.bias' has shape \[31\]"),
    ("LoRA ranks that disagree", "ranks that disagree"),
    ("block the routing maps lack", "routing-map LoRAs are on blocks"),
])
def test_anystory_shapes_are_checked_at_load_not_in_encode_reference(tmp_path, case, named):
    path = _rewrite(_tiny_file("anystory", tmp_path), _anystory_case(case))
    with pytest.raises(safe_load.CheckpointError, match=named):
        registry.load_subject_encoder(path)


def test_a_redux_style_model_of_another_width_is_named_at_load(tmp_path):
    import comfy.ldm.flux.redux
    import comfy.sd

    import anystory_tiny

    encoder = registry.load_subject_encoder(_tiny_file("anystory", tmp_path))
    module = comfy.ldm.flux.redux.ReduxImageEncoder(redux_dim=anystory_tiny.SIGLIP_DIM + 8, txt_in_features=anystory_tiny.TXT_DIM)
    with pytest.raises(ValueError, match="Redux weights of the style model.*redux_up.weight"):
        encoder.with_style_model(comfy.sd.StyleModel(module))
