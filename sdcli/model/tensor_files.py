"""Tensors from the files people download (LoRAs, embeddings), read with numpy alone.

* `.safetensors`: an 8-byte little-endian header length, a JSON header (name -> dtype,
  shape, byte range; `__metadata__`: strings), then the data.  Read without the safetensors
  package (which is not a run-time dependency); bf16 is widened to float32.
* `.pt` / `.ckpt` / `.bin` written by `torch.save`: a zip whose `data.pkl` is a pickle.
  A pickle can run code, so these are refused unless the caller allows them
  (`--allow-pickle`), and even then they are read by an unpickler that builds only
  dicts, lists, numbers, strings and tensors (no torch needed), and rejects anything else.
"""
from __future__ import annotations

import json
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

from sdcli.util.errors import UsageError

PICKLE_SUFFIXES = (".pt", ".ckpt", ".bin", ".pth")
HEADER_MAX = 100 << 20  # a header larger than this is not a real file's

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": "bf16",
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


def safetensors_header(path: Path) -> tuple[dict, int]:
    """(header, offset of the data) of a .safetensors file; UsageError when it is not one."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("shorter than a header")
            (length,) = struct.unpack("<Q", head)
            if length > HEADER_MAX:
                raise ValueError("header length out of range")
            header = json.loads(f.read(length))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not a readable .safetensors file ({exc})") from None
    if not isinstance(header, dict):
        raise UsageError(f"{path}: not a readable .safetensors file (its header is not a table)")
    return header, 8 + length


def read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """({name: array}, metadata) of a .safetensors file; arrays are read-only views of the
    mapped file, bf16 ones float32 copies."""
    header, offset = safetensors_header(path)
    metadata = header.pop("__metadata__", None) or {}
    size = path.stat().st_size
    data = np.memmap(path, dtype=np.uint8, mode="r") if size > offset else np.zeros(0, np.uint8)
    tensors = {}
    for name, info in header.items():
        try:
            dtype = _DTYPES[info["dtype"]]
            shape = [int(d) for d in info["shape"]]
            start, end = (int(v) for v in info["data_offsets"])
            raw = data[offset + start: offset + end]
            if end > size - offset or start > end:
                raise ValueError("data beyond the end of the file")
            if dtype == "bf16":
                array = _bf16_to_f32(raw.view(np.uint16)).reshape(shape)
            else:
                array = raw.view(dtype).reshape(shape)
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"{path}: tensor {name!r} cannot be read ({type(exc).__name__}: {exc})") from None
        tensors[name] = array
    return tensors, {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}


# --- torch.save files, without torch ---------------------------------------------------------

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "HalfStorage": np.float16, "DoubleStorage": np.float64,
    "BFloat16Storage": "bf16", "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _Storage:
    def __init__(self, dtype, key: str):
        self.dtype, self.key = dtype, key


def _rebuild_tensor(storage, offset, size, stride, *_ignored):
    return ("tensor", storage, int(offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, *_ignored):
    return data


class _StateDict(dict):
    """collections.OrderedDict as a dict; the attributes pickled with it are dropped (a module's
    state_dict() carries `_metadata`, the modules' versions, which torch.save keeps)."""

    def __setstate__(self, state):
        pass


class _TensorUnpickler(pickle.Unpickler):
    """Builds containers, numbers, strings and tensors; any other class is refused."""

    _ALLOWED = {
        ("collections", "OrderedDict"): _StateDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        raise pickle.UnpicklingError(f"it holds a {module}.{name}, which is not a tensor or a plain value")

    def persistent_load(self, pid):
        # ('storage', storage type, key, location, numel)
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"):
            raise pickle.UnpicklingError("unknown persistent object")
        kind = pid[1] if isinstance(pid[1], str) else getattr(pid[1], "__name__", str(pid[1]))
        if kind not in _STORAGE_DTYPES:
            raise pickle.UnpicklingError(f"unknown storage {kind}")
        return _Storage(_STORAGE_DTYPES[kind], str(pid[2]))


def _materialize(value, archive: zipfile.ZipFile, prefix: str, cache: dict):
    if isinstance(value, tuple) and len(value) == 5 and value[0] == "tensor":
        _, storage, offset, size, stride = value
        if storage.key not in cache:
            raw = np.frombuffer(archive.read(f"{prefix}data/{storage.key}"), dtype=np.uint8)
            cache[storage.key] = _bf16_to_f32(raw.view(np.uint16)) if storage.dtype == "bf16" else raw.view(storage.dtype)
        flat = cache[storage.key]
        itemsize = flat.itemsize
        return np.lib.stride_tricks.as_strided(flat[offset:], shape=size,
                                               strides=[s * itemsize for s in stride]).copy()
    if isinstance(value, dict):
        return {k: _materialize(v, archive, prefix, cache) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_materialize(v, archive, prefix, cache) for v in value)
    return value


def read_torch_pickle(path: Path) -> object:
    """The object a `torch.save` zip file holds, with tensors as numpy arrays (see the module's
    docstring: only plain values and tensors are built)."""
    try:
        with zipfile.ZipFile(path) as archive:
            pkl = [n for n in archive.namelist() if n.endswith("data.pkl")]
            if not pkl:
                raise ValueError("no data.pkl inside")
            prefix = pkl[0][: -len("data.pkl")]
            with archive.open(pkl[0]) as f:
                obj = _TensorUnpickler(f).load()
            return _materialize(obj, archive, prefix, {})
    except zipfile.BadZipFile:
        raise UsageError(f"{path}: not a torch.save zip file (the legacy format is not read)") from None
    except (pickle.UnpicklingError, ValueError, KeyError, EOFError, TypeError, AttributeError) as exc:
        raise UsageError(f"{path}: cannot be read safely: {exc}") from None


def read_tensors(path: Path, allow_pickle: bool, what: str) -> tuple[object, dict[str, str]]:
    """The tensors of a .safetensors file, or with `allow_pickle` what a torch.save file holds;
    (content, safetensors metadata)."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return read_safetensors(path)
    if suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise UsageError(f"{what} {path.name} is a pickle ({suffix}), which can run code when loaded: "
                             "pass --allow-pickle if you trust it, or use a .safetensors version")
        return read_torch_pickle(path), {}
    raise UsageError(f"{what} {path.name}: unknown file type {suffix!r} (.safetensors, or a pickle with --allow-pickle)")
