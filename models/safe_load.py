"""Read tensor checkpoints without ever running code from them, and look before reading.

``.safetensors`` through safetensors, pickles only through ``torch.load(weights_only=True)``;
nested dicts are flattened to dotted keys. Before a pickle's tensors are read, its structure
is read alone (the zip's ``data.pkl`` with a restricted unpickler that materialises no
storage), so a foreign file is recognised from its keys and a file whose tensors declare more
bytes than it holds (a compressed bomb, a forged size) is refused without reading them.

Every floating tensor read is checked for NaN, infinity and absurd magnitudes (a damaged file,
or one saved from a diverged training run, would otherwise give black images with no error),
tensor by tensor in bounded chunks, never a second copy of the file.
"""

from __future__ import annotations

import collections
import pickle
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .safe_text import quoted

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt"}
SAFETENSORS_SUFFIX = ".safetensors"
MAX_STRUCTURE_BYTES = 64 * 2**20  # a data.pkl describes tensors; hundreds of MB of it is not a checkpoint
MAX_ENTRIES = 1_000_000  # keys in all its dicts together (ms_adapter.bin has under 2,000)
ZIP_START = b"PK"
LEGACY_PICKLE_START = b"\x80"  # torch.save's pre-zip format starts with a pickle protocol opcode
STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32, "ShortStorage": torch.int16,
    "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}
# No trained weight of these models comes near it (their largest are O(10): norms, embeddings); a value this large
# times an O(1) activation is far past fp16's 65504 after one matmul and swamps the image.
MAX_WEIGHT_MAGNITUDE = 1e4
CHECK_CHUNK = 2**20  # elements cast to float32 at once by the value check (4 MiB)
REFUSED_OBJECTS = (
    "was refused: it contains Python objects other than tensors, and only plain tensor checkpoints are loaded "
    "(torch.load with weights_only=True). Use the official file or a .safetensors conversion from a source you trust."
)
# What a file is when its keys start like this, for errors that tell users where it belongs.
FOREIGN_FORMATS = (
    ("ip_adapter.", "an IP-Adapter model (load it with an IP-Adapter pack)"),
    ("model.diffusion_model.", "a Stable Diffusion checkpoint; put it in models/checkpoints"),
    ("vision_model.", "a CLIP-Vision model; put it in models/clip_vision and load it with Load CLIP Vision"),
    ("visual.", "a CLIP-Vision model; put it in models/clip_vision and load it with Load CLIP Vision"),
    ("lora_unet_", "a LoRA; load it with a LoRA loader"),
)


class CheckpointError(ValueError):
    """A file that cannot be read as a plain tensor checkpoint."""


@dataclass(frozen=True)
class _Storage:
    key: str
    dtype: torch.dtype
    numel: int


@dataclass(frozen=True)
class TensorStub:
    """A tensor of a pickle's structure: its shape and where its bytes are, nothing read."""

    storage: _Storage
    shape: tuple[int, ...]


def _rebuild_tensor(storage, _offset, size, *_args):
    return TensorStub(storage, tuple(size))


def _rebuild_tensor_v3(storage, _offset, size, _stride, _requires_grad, _hooks, _dtype, *_args):
    """torch.save's form for dtypes without a typed storage class (fp8): an untyped (byte) storage plus the dtype."""
    return TensorStub(storage, tuple(size))


def _rebuild_parameter(data, *_args):
    return data


class _StructureUnpickler(pickle.Unpickler):
    """Unpickles a torch.save ``data.pkl`` into dicts of :class:`TensorStub`; refuses every other object."""

    ALLOWED = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
        ("torch.storage", "UntypedStorage"): torch.uint8,  # its numel counts bytes
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("collections", "OrderedDict"): collections.OrderedDict,
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):  # _rebuild_tensor_v3's dtype argument
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[4], int)):
            raise pickle.UnpicklingError("unexpected persistent id")
        if not isinstance(pid[1], torch.dtype):
            raise pickle.UnpicklingError("unexpected storage type")
        return _Storage(str(pid[2]), pid[1], pid[4])


def _regular_file(path: Path, error: type[CheckpointError]) -> int:
    """The size of ``path``, refusing what is not a regular file (a symlink to a folder, a device, a pipe)."""
    try:
        info = path.stat()
    except OSError as e:
        raise error(f"{quoted(path.name)} cannot be read ({quoted(e.strerror or e)}); check that the file exists") from None
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{quoted(path.name)} is not a model file (it is or points to a folder or a device); "
                    "put the checkpoint file itself in the folder")
    if info.st_size == 0:
        raise error(f"{quoted(path.name)} is empty. Download it again.")
    return info.st_size


def read_structure(path: str | Path, error: type[CheckpointError] = CheckpointError) -> dict[str, TensorStub] | None:
    """Flat ``{key: TensorStub}`` of a zip-format pickle checkpoint, reading no tensor data.

    None for the pre-zip pickle format (its tensors are no larger than the file). Raises ``error``
    for a file that is not a checkpoint, holds other objects, or declares more bytes than it holds.
    """
    path = Path(path)
    file_size = _regular_file(path, error)
    name = quoted(path.name)
    if not zipfile.is_zipfile(path):
        with path.open("rb") as f:
            start = f.read(2)
        if start == ZIP_START:
            raise error(f"{name} is truncated or corrupt (an incomplete zip archive). Download it again.")
        if start[:1] != LEGACY_PICKLE_START:
            raise error(f"{name} is not a PyTorch checkpoint (neither a torch.save zip nor a pickle). "
                            "Download the model file again.")
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            entries = {info.filename: info for info in archive.infolist()}
            structure = [n for n in entries if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(structure) != 1:
                raise error(f"{name} is a zip archive but not a PyTorch checkpoint (no data.pkl). Download the model file again.")
            root = structure[0][: -len("data.pkl")]
            if entries[structure[0]].file_size > MAX_STRUCTURE_BYTES:
                raise error(f"{name} declares a {entries[structure[0]].file_size}-byte structure; it is not a checkpoint.")
            with archive.open(structure[0]) as f:
                obj = _StructureUnpickler(f).load()
    except error:
        raise
    except pickle.UnpicklingError:
        raise error(f"{name} {REFUSED_OBJECTS}") from None
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            RecursionError, MemoryError) as e:
        raise error(f"{name} is truncated or corrupt ({quoted(type(e).__name__)}). Download it again.") from None
    if not isinstance(obj, dict):
        raise error(f"{name} holds a {type(obj).__name__}, not a dict of tensors")
    flat = _flat_structure(obj, name, error)
    _check_declared_sizes(name, flat, entries, root, file_size, error)
    return flat


def _flat_structure(obj: dict, name: str, error: type[CheckpointError]) -> dict[str, TensorStub]:
    """Flat stubs, refusing a structure of more than ``MAX_ENTRIES`` entries (shared dicts nest exponentially)."""
    flat: dict[str, TensorStub] = {}
    pending, visited = [("", obj)], 0
    while pending:
        prefix, node = pending.pop()
        visited += len(node)
        if visited > MAX_ENTRIES:
            raise error(f"{name} describes more than {MAX_ENTRIES} entries; it is not a checkpoint this pack loads.")
        for key, value in node.items():
            if isinstance(value, dict):
                pending.append((f"{prefix}{key}.", value))
            elif isinstance(value, TensorStub):
                flat[f"{prefix}{key}"] = value
    return flat


def _check_declared_sizes(name: str, flat: dict[str, TensorStub], entries: dict, root: str, file_size: int,
                          error: type[CheckpointError]) -> None:
    """Every storage is stored uncompressed, as big as its tensors say and no bigger than the file."""
    storages = {stub.storage.key: stub.storage for stub in flat.values()}
    declared = 0
    for key, storage in storages.items():
        entry = entries.get(f"{root}data/{key}")
        nbytes = storage.numel * storage.dtype.itemsize
        if entry is None or entry.compress_type != zipfile.ZIP_STORED or entry.file_size != nbytes:
            raise error(f"{name} is not a plain torch.save checkpoint: tensor data {quoted(key)} is missing, compressed or "
                        "of another size than its tensors declare. Download the model file again.")
        declared += nbytes
    if declared > file_size:
        raise error(f"{name} declares {declared} bytes of tensors in a {file_size}-byte file. Download it again.")


def _safetensors_path(path: Path, error: type[CheckpointError]) -> str:
    """``path`` as the safetensors library opens it: a regular file whose path is valid UTF-8.

    The library reads a path with non-UTF-8 bytes (lone surrogates in Python) as another path,
    so such a file would look missing or corrupt.
    """
    _regular_file(path, error)
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise error(f"{quoted(path.name)}: its path has bytes that are not UTF-8 text, which .safetensors files cannot be "
                    "opened from; rename the file (or its folder)") from None
    return text


def check_values(key: str, tensor: torch.Tensor, name: str, error: type[CheckpointError]) -> torch.Tensor:
    """``tensor``, or ``error`` naming ``key`` when it holds NaN, infinity or a magnitude above MAX_WEIGHT_MAGNITUDE."""
    if not tensor.is_floating_point():
        return tensor
    flat = tensor.detach().reshape(-1)
    for start in range(0, flat.numel(), CHECK_CHUNK):
        chunk = flat[start:start + CHECK_CHUNK].float()
        peak = chunk.abs().max().item() if chunk.numel() else 0.0
        if peak <= MAX_WEIGHT_MAGNITUDE:
            continue
        what = ("NaN (not-a-number) values" if chunk.isnan().any() else "infinite values" if chunk.isinf().any()
                else f"a value of {peak:.3g}, far beyond what trained weights hold (at most {MAX_WEIGHT_MAGNITUDE:g})")
        raise error(f"{name}: tensor {quoted(key)} holds {what}; the file is damaged or was saved from a diverged training run. "
                    "Download it again.")
    return tensor


def require_floating(flat: dict[str, torch.Tensor], name: str, error: type[CheckpointError], kind: str,
                     fix: str) -> None:
    """``error`` naming the first integer tensor: a quantised file, whose integers would be read as weights."""
    key = next((k for k, t in flat.items() if not t.is_floating_point()), None)
    if key is not None:
        raise error(f"{name} holds {str(flat[key].dtype).removeprefix('torch.')} weights ({quoted(key)}): a quantised file. "
                    f"{kind} loads floating-point files (fp32, fp16, bf16 or fp8): {fix}")


def read_tensors(path: str | Path, error: type[CheckpointError] = CheckpointError) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Flat ``{key: tensor}`` and the metadata (safetensors only) of ``path``, every value checked (see check_values)."""
    path = Path(path)
    name = quoted(path.name)
    suffix = path.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        opened = _safetensors_path(path, error)
        try:
            with safe_open(opened, framework="pt", device="cpu") as f:
                return {k: check_values(k, f.get_tensor(k), name, error) for k in f.keys()}, dict(f.metadata() or {})
        except CheckpointError:
            raise
        except (SafetensorError, OSError, ValueError) as e:
            raise error(f"{name} is truncated or not a valid .safetensors file ({quoted(e)}). Download it again.") from None
    if suffix not in PICKLE_SUFFIXES:
        raise error(f"{name}: unsupported file type {quoted(suffix)}; use .safetensors or a PyTorch .bin/.pth file")
    read_structure(path, error)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise error(f"{name} {REFUSED_OBJECTS}") from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, OSError, ValueError, TypeError, IndexError, KeyError,
            AttributeError) as e:
        raise error(f"{name} is truncated or corrupt ({quoted(e)}). Download it again.") from None
    if not isinstance(obj, dict):
        raise error(f"{name} holds a {type(obj).__name__}, not a dict of tensors")
    return {k: check_values(k, t, name, error) for k, t in flatten(obj).items()}, {}


def read_keys(path: str | Path, error: type[CheckpointError] = CheckpointError) -> frozenset[str]:
    """The flat tensor keys of ``path``, to recognise what a file is before loading it (no tensor is read)."""
    path = Path(path)
    if path.suffix.lower() == SAFETENSORS_SUFFIX:
        opened = _safetensors_path(path, error)
        try:
            with safe_open(opened, framework="pt", device="cpu") as f:
                return frozenset(f.keys())
        except (SafetensorError, OSError, ValueError) as e:
            raise error(f"{quoted(path.name)} is truncated or not a valid .safetensors file ({quoted(e)}). "
                        "Download it again.") from None
    if path.suffix.lower() in PICKLE_SUFFIXES:
        structure = read_structure(path, error)
        if structure is not None:
            return frozenset(structure)
    return frozenset(read_tensors(path, error)[0])


def foreign_format(keys) -> str | None:
    """What kind of other model a file with these keys is, or None."""
    for prefix, what in FOREIGN_FORMATS:
        if any(k.startswith(prefix) for k in keys):
            return what
    return None


def flatten(obj: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    flat: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        elif isinstance(value, torch.Tensor):
            flat[f"{prefix}{key}"] = value
    return flat
