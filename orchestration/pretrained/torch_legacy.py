"""Read a PyTorch state dict saved in the legacy (pre-1.6, non-zip) format, without PyTorch.

The legacy file is five pickles in a row, then the raw bytes of every storage:

1. the magic number, 2. the protocol version (1001), 3. a dict of system info (endianness and
type sizes), 4. the object itself (here an `OrderedDict` of tensors), whose storages are
persistent ids `("storage", <storage class>, key, location, numel, view_metadata)`,
5. the list of storage keys, in the order their bytes follow; each storage is then an 8-byte
little-endian element count and that many elements.

Only a short allowlist of globals may be named by the pickles (the tensor and parameter
rebuild functions, `OrderedDict` and the storage classes): anything else, such as a pickle that
would call `os.system`, is refused before it runs. Tensors become numpy arrays (views of their
storage with the recorded offset, shape and strides, copied out).
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

# torch.<Name>Storage → numpy dtype
STORAGE_DTYPES: dict[str, np.dtype[Any]] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class TorchFileError(ValueError):
    """The file is not a legacy PyTorch state dict this reader accepts."""


@dataclass(frozen=True)
class _StorageType:
    name: str

    @property
    def dtype(self) -> np.dtype[Any]:
        return STORAGE_DTYPES[self.name]


@dataclass
class _Storage:
    key: str
    dtype: np.dtype[Any]
    numel: int
    data: npt.NDArray[Any] | None = None


@dataclass
class _TensorRef:
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    def materialise(self) -> npt.NDArray[Any]:
        data = self.storage.data
        if data is None:
            raise TorchFileError(f"storage {self.storage.key} has no data")
        if not self.shape:
            return np.array(data[self.offset], dtype=data.dtype)
        itemsize = data.dtype.itemsize
        needed = self.offset + 1 + sum((n - 1) * s for n, s in zip(self.shape, self.stride, strict=True))
        if any(n == 0 for n in self.shape):
            return np.zeros(self.shape, dtype=data.dtype)
        if self.offset < 0 or needed > data.size or any(s < 0 for s in self.stride):
            raise TorchFileError(f"tensor view {self.shape}/{self.stride}+{self.offset} is outside its storage")
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :], shape=self.shape, strides=[s * itemsize for s in self.stride], writeable=False
        )
        return np.array(view)  # a copy: contiguous, independent of the storage


def _rebuild_tensor(storage: _Storage, offset: int, shape: Any, stride: Any, *_ignored: Any) -> _TensorRef:
    return _TensorRef(storage, int(offset), tuple(int(n) for n in shape), tuple(int(s) for s in stride))


def _rebuild_parameter(data: _TensorRef, *_ignored: Any) -> _TensorRef:
    return data


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, storages: dict[str, _Storage]) -> None:
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise TorchFileError(f"refused to load {module}.{name}: not a tensor, storage or OrderedDict")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise TorchFileError(f"unexpected persistent id {pid!r}")
        _, kind, key, _location, numel = pid[:5]
        if not isinstance(kind, _StorageType):
            raise TorchFileError(f"unexpected storage type {kind!r}")
        if len(pid) > 5 and pid[5] is not None:
            raise TorchFileError("storage views (view_metadata) are not supported")
        key = str(key)
        if key not in self._storages:
            self._storages[key] = _Storage(key, kind.dtype, int(numel))
        return self._storages[key]


def _load_one(file: BinaryIO, storages: dict[str, _Storage]) -> Any:
    return _Unpickler(file, storages).load()


def read_state_dict(path: Path) -> dict[str, npt.NDArray[Any]]:
    """The legacy `.pth` file at `path` → {name: numpy array}, in the file's order."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"PK":
        raise TorchFileError(f"{path} is a zip-format (PyTorch ≥ 1.6) file, not the legacy format")
    file = io.BytesIO(raw)
    storages: dict[str, _Storage] = {}
    try:
        if _load_one(file, storages) != MAGIC_NUMBER:
            raise TorchFileError(f"{path} is not a legacy PyTorch file (wrong magic number)")
        if _load_one(file, storages) != PROTOCOL_VERSION:
            raise TorchFileError(f"{path}: unsupported protocol version")
        info = _load_one(file, storages)
        if not isinstance(info, dict) or not info.get("little_endian", False):
            raise TorchFileError(f"{path}: only little-endian files are supported")
        state = _load_one(file, storages)
        keys = _load_one(file, storages)
    except (pickle.UnpicklingError, EOFError, struct.error) as exc:
        raise TorchFileError(f"{path}: not a readable legacy PyTorch file: {exc}") from None
    if not isinstance(state, dict) or not isinstance(keys, list):
        raise TorchFileError(f"{path}: expected a state dict and a list of storage keys")
    for key in keys:
        storage = storages.get(str(key))
        if storage is None:
            raise TorchFileError(f"{path}: storage {key} is listed but no tensor uses it")
        (count,) = struct.unpack("<q", file.read(8))
        if count != storage.numel:
            raise TorchFileError(f"{path}: storage {key} holds {count} elements, {storage.numel} expected")
        size = count * storage.dtype.itemsize
        chunk = file.read(size)
        if len(chunk) != size:
            raise TorchFileError(f"{path}: file ends inside storage {key}")
        storage.data = np.frombuffer(chunk, dtype=storage.dtype)
    out: dict[str, npt.NDArray[Any]] = {}
    for name, value in state.items():
        if not isinstance(value, _TensorRef):
            raise TorchFileError(f"{path}: entry {name!r} is not a tensor")
        out[str(name)] = value.materialise()
    return out
