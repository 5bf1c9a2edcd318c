"""Read a PyTorch checkpoint saved in torch's legacy (pre-1.6, non-zip) format into numpy, without torch.

The file is five pickles in a row (magic number, protocol version, system info, the object, the storage keys)
and then each storage's raw bytes, prefixed by its element count. Tensors in the object are references to those
storages (pickle persistent ids), so they are resolved after the storages are read. Only plain dense tensors,
dicts and the few classes a state dict uses are accepted: anything else is refused, not executed.
"""

from __future__ import annotations

import collections
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class CheckpointError(ValueError):
    """The file is not a legacy checkpoint this reader understands."""


@dataclass(frozen=True)
class _StorageType:
    dtype: type[np.generic]


@dataclass
class _Storage:
    key: str
    dtype: type[np.generic]
    data: np.ndarray | None = None


@dataclass(frozen=True)
class _TensorRef:
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    def resolve(self) -> np.ndarray:
        if self.storage.data is None:
            raise CheckpointError(f"storage {self.storage.key} was never written")
        itemsize = self.storage.data.itemsize
        view = np.lib.stride_tricks.as_strided(
            self.storage.data[self.offset :],
            shape=self.shape,
            strides=tuple(s * itemsize for s in self.stride),
        )
        return np.array(view)  # a copy that owns its memory


def _rebuild_tensor(storage: _Storage, offset: int, shape: tuple[int, ...], stride: tuple[int, ...], *_: Any) -> Any:
    return _TensorRef(storage, offset, tuple(shape), tuple(stride))


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], storages: dict[str, _Storage]) -> None:
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(STORAGE_DTYPES[name])
        raise CheckpointError(f"refusing to load {module}.{name} from a checkpoint")

    def persistent_load(self, pid: Any) -> Any:
        kind, storage_type, key, _location, _numel, *_view = pid
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"unexpected persistent id {pid!r}")
        return self.storages.setdefault(key, _Storage(key, storage_type.dtype))


def _resolve(value: Any) -> Any:
    if isinstance(value, _TensorRef):
        return value.resolve()
    if isinstance(value, dict):
        return {key: _resolve(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_resolve(item) for item in value)
    return value


def load_legacy_checkpoint(path: Path) -> Any:
    """The checkpoint's object with every tensor as a numpy array."""
    storages: dict[str, _Storage] = {}
    with path.open("rb") as file:
        try:
            if pickle.load(file) != LEGACY_MAGIC:
                raise CheckpointError(f"{path} is not a legacy PyTorch checkpoint")
            pickle.load(file)  # protocol version
            pickle.load(file)  # system info: endianness, sizes of C types
        except (pickle.UnpicklingError, EOFError) as exc:
            raise CheckpointError(f"{path} is not a legacy PyTorch checkpoint") from exc
        obj = _Unpickler(file, storages).load()
        keys = _Unpickler(file, storages).load()
        for key in keys:
            storage = storages[key]
            (count,) = struct.unpack("<q", file.read(8))
            raw = file.read(count * np.dtype(storage.dtype).itemsize)
            storage.data = np.frombuffer(raw, dtype=storage.dtype)
    return _resolve(obj)
