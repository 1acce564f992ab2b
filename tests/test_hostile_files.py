"""Files in the model folders that are not what they claim: refused by name, before their tensors are read."""

import os
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
