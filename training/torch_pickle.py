"""Read PyTorch checkpoint files into numpy arrays without importing torch.

PyTorch checkpoints are pickles, and unpickling runs whatever callable the file
names. This reader therefore uses a restricted :class:`pickle.Unpickler` whose
``find_class`` resolves only a short allow-list of names (tensor rebuild
functions, storage classes, ``collections.OrderedDict``) to harmless stand-ins
defined here; any other global (``os.system``, ``builtins.eval``, ...) raises
:class:`UnsafePickleError` before anything is called.

Two container formats exist:

*Legacy* (``torch.save(..., _use_new_zipfile_serialization=False)``, and every
file written before PyTorch 1.6) is a stream of consecutive pickles::

    pickle(magic number 0x1950a86a20f9469cfc6c)
    pickle(protocol version 1001)
    pickle(sys_info dict: little_endian, type_sizes, ...)
    pickle(the object; storages are persistent ids
           ("storage", StorageClass, key, location, element_count, view_metadata))
    pickle(list of storage keys, in the order their bytes follow)
    for each key: int64 element count, then the raw little-endian elements

*Zip* (the default since PyTorch 1.6) is a zip archive holding
``<archive>/data.pkl`` (the object; persistent ids are
``("storage", StorageClass, key, location, element_count)``) and one file
``<archive>/data/<key>`` of raw bytes per storage.

Tensors are rebuilt with ``numpy.lib.stride_tricks.as_strided`` from the storage,
the storage offset, the size and the stride (all counted in elements, as in
PyTorch) and then copied, so every returned array is contiguous and owns its data.
"""

from __future__ import annotations

import io
import os
import pathlib
import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# PyTorch storage class name -> numpy dtype of one element (little-endian on disk).
# BFloat16 has no numpy equivalent, so checkpoints using it are refused.
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


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list (it might execute code)."""


class CheckpointFormatError(ValueError):
    """The file is not a PyTorch checkpoint this reader understands."""


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for a ``torch.*Storage`` class: only its element dtype matters."""

    name: str
    dtype: np.dtype[Any]


@dataclass
class _Storage:
    """A storage seen in the object pickle; its bytes may only arrive later (legacy)."""

    key: str
    dtype: np.dtype[Any]
    element_count: int
    data: np.ndarray | None = None


@dataclass
class _StorageView:
    """Legacy storage view (``view_metadata``): a slice of a root storage."""

    root: _Storage
    element_offset: int
    element_count: int


@dataclass
class _PendingTensor:
    """A tensor whose storage bytes have not necessarily been read yet."""

    storage: _Storage | _StorageView
    storage_offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    extra: dict[str, Any] = field(default_factory=dict)


def _rebuild_tensor(
    storage: _Storage | _StorageView,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    *_ignored: Any,
) -> _PendingTensor:
    """Stand-in for ``torch._utils._rebuild_tensor`` and ``_rebuild_tensor_v2``.

    The v2 variant also passes ``requires_grad``, ``backward_hooks`` and optional
    metadata; none of them affect the values, so they are dropped.
    """
    if not isinstance(storage, _Storage | _StorageView):
        raise CheckpointFormatError(f"tensor built from {type(storage).__name__}, not a storage")
    return _PendingTensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data: Any, *_ignored: Any) -> Any:
    """Stand-in for ``torch._utils._rebuild_parameter``: a Parameter is just its tensor."""
    return data


# (module, name) -> object the restricted unpickler may return for that global.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name, dtype) for name, dtype in STORAGE_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals and turns storages into records.

    ``storage_loader`` is called with a new :class:`_Storage` the first time its key
    is seen; the zip reader fills the data there, the legacy reader leaves it empty
    until the storage bytes that follow the object pickle are read.
    """

    def __init__(
        self,
        file: IO[bytes],
        storages: dict[str, _Storage],
        storage_loader: Callable[[_Storage], None] | None = None,
    ) -> None:
        super().__init__(file)
        self._storages = storages
        self._storage_loader = storage_loader

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"refusing to load global {module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise UnsafePickleError(f"unsupported persistent id {pid!r}")
        # Legacy ids carry a sixth field (view metadata); zip ids have five.
        if len(pid) not in (5, 6):
            raise CheckpointFormatError(f"malformed storage id {pid!r}")
        storage_type, key, _location, element_count = pid[1:5]
        view_metadata = pid[5] if len(pid) == 6 else None
        if not isinstance(storage_type, _StorageType):
            raise CheckpointFormatError(f"storage of unknown type {storage_type!r}")
        key = str(key)
        storage = self._storages.get(key)
        if storage is None:
            storage = _Storage(key, storage_type.dtype, int(element_count))
            self._storages[key] = storage
            if self._storage_loader is not None:
                self._storage_loader(storage)
        if view_metadata is None:
            return storage
        _view_key, view_offset, view_count = view_metadata
        return _StorageView(storage, int(view_offset), int(view_count))


def _materialize_tensor(tensor: _PendingTensor) -> np.ndarray:
    """Apply offset, size and stride (in elements) to the storage; return a copy."""
    base_offset = 0
    storage = tensor.storage
    if isinstance(storage, _StorageView):
        base_offset = storage.element_offset
        available = storage.element_count
        storage = storage.root
    else:
        available = storage.element_count
    if storage.data is None:
        raise CheckpointFormatError(f"storage {storage.key} has no data")
    if any(dimension < 0 for dimension in tensor.size) or any(step < 0 for step in tensor.stride):
        raise CheckpointFormatError("negative tensor size or stride")
    if len(tensor.size) != len(tensor.stride):
        raise CheckpointFormatError("tensor size and stride have different lengths")
    if 0 in tensor.size:
        return np.zeros(tensor.size, dtype=storage.dtype)
    # Bounds check before as_strided, which would otherwise read outside the buffer.
    last_index = tensor.storage_offset + sum(
        (dimension - 1) * step for dimension, step in zip(tensor.size, tensor.stride, strict=True)
    )
    if tensor.storage_offset < 0 or last_index >= available:
        raise CheckpointFormatError(
            f"tensor reaches element {last_index} of a storage of {available} elements"
        )
    flat = storage.data[base_offset + tensor.storage_offset :]
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat,
        shape=tensor.size,
        strides=tuple(step * itemsize for step in tensor.stride),
        writeable=False,
    )
    return np.array(view, copy=True, order="C")


def _materialize(value: Any) -> Any:
    """Replace every pending tensor inside (nested) containers by a numpy array."""
    if isinstance(value, _PendingTensor):
        return _materialize_tensor(value)
    if isinstance(value, OrderedDict):
        # Keep the type (state dicts are OrderedDicts) and attributes such as _metadata.
        rebuilt: OrderedDict[Any, Any] = OrderedDict((key, _materialize(item)) for key, item in value.items())
        rebuilt.__dict__.update(value.__dict__)
        return rebuilt
    if isinstance(value, dict):
        return {key: _materialize(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_materialize(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_materialize(item) for item in value)
    return value


def _read_exact(file: IO[bytes], byte_count: int) -> bytes:
    data = file.read(byte_count)
    if len(data) != byte_count:
        raise CheckpointFormatError("file ends inside a storage")
    return data


def _load_legacy(file: IO[bytes]) -> Any:
    # The header pickles hold only ints, bools, strings and dicts; the restricted
    # unpickler still guards them.
    magic_number = _RestrictedUnpickler(file, {}).load()
    if magic_number != LEGACY_MAGIC_NUMBER:
        raise CheckpointFormatError("not a legacy PyTorch checkpoint (bad magic number)")
    protocol_version = _RestrictedUnpickler(file, {}).load()
    if protocol_version != LEGACY_PROTOCOL_VERSION:
        raise CheckpointFormatError(f"unsupported legacy protocol version {protocol_version}")
    sys_info = _RestrictedUnpickler(file, {}).load()
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise CheckpointFormatError("big-endian checkpoints are not supported")

    storages: dict[str, _Storage] = {}
    result = _RestrictedUnpickler(file, storages).load()
    storage_keys = _RestrictedUnpickler(file, {}).load()
    if not isinstance(storage_keys, list):
        raise CheckpointFormatError("storage key list missing")
    for key in storage_keys:
        storage = storages.get(str(key))
        if storage is None:
            raise CheckpointFormatError(f"bytes for unknown storage {key!r}")
        (element_count,) = struct.unpack("<q", _read_exact(file, 8))
        if element_count != storage.element_count:
            raise CheckpointFormatError(
                f"storage {key}: {element_count} elements on disk, {storage.element_count} expected"
            )
        raw = _read_exact(file, element_count * storage.dtype.itemsize)
        storage.data = np.frombuffer(raw, dtype=storage.dtype)
    return _materialize(result)


def _load_zip(archive: zipfile.ZipFile) -> Any:
    pickle_names = [name for name in archive.namelist() if name.endswith("/data.pkl")]
    if len(pickle_names) != 1:
        raise CheckpointFormatError("zip checkpoint without exactly one */data.pkl")
    prefix = pickle_names[0][: -len("data.pkl")]

    def load_storage(storage: _Storage) -> None:
        raw = archive.read(f"{prefix}data/{storage.key}")
        expected = storage.element_count * storage.dtype.itemsize
        if len(raw) < expected:
            raise CheckpointFormatError(f"storage {storage.key} is truncated")
        storage.data = np.frombuffer(raw[:expected], dtype=storage.dtype)

    storages: dict[str, _Storage] = {}
    with archive.open(pickle_names[0]) as pickle_file:
        result = _RestrictedUnpickler(io.BytesIO(pickle_file.read()), storages, load_storage).load()
    return _materialize(result)


def load(path: str | os.PathLike[str]) -> Any:
    """Load a PyTorch checkpoint (legacy or zip), tensors as numpy arrays.

    Returns the unpickled object (usually an ``OrderedDict`` state dict) with every
    tensor replaced by a contiguous numpy array. Raises :class:`UnsafePickleError`
    if the file names a global outside the allow-list.
    """
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return _load_zip(archive)
    with pathlib.Path(path).open("rb") as file:
        return _load_legacy(file)


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Load a checkpoint that is a flat mapping of parameter names to tensors."""
    loaded = load(path)
    if not isinstance(loaded, Mapping):
        raise CheckpointFormatError(f"checkpoint holds a {type(loaded).__name__}, not a dict")
    state_dict: dict[str, np.ndarray] = {}
    for key, value in loaded.items():
        if not isinstance(value, np.ndarray):
            raise CheckpointFormatError(f"entry {key!r} is a {type(value).__name__}, not a tensor")
        state_dict[str(key)] = value
    return state_dict
