"""training.torch_pickle on small checkpoints written by hand (no torch needed).

The writer below produces the same bytes layout as ``torch.save``: global names
such as ``torch._utils._rebuild_tensor_v2`` are emitted as GLOBAL opcodes, so
the reader is exercised exactly as on a real checkpoint.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from training import torch_pickle

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
SYS_INFO = {
    "protocol_version": PROTOCOL_VERSION,
    "little_endian": True,
    "type_sizes": {"short": 2, "int": 4, "long": 4},
}


@dataclass(frozen=True)
class GlobalName:
    """A global ("module", "name") written as a GLOBAL opcode without importing it."""

    module: str
    name: str

    def __call__(self, *arguments: Any) -> Any:  # pickle insists reduce functions are callable
        raise NotImplementedError


REBUILD_TENSOR_V2 = GlobalName("torch._utils", "_rebuild_tensor_v2")
FLOAT_STORAGE = GlobalName("torch", "FloatStorage")
LONG_STORAGE = GlobalName("torch", "LongStorage")


@dataclass(frozen=True)
class FakeStorage:
    key: str
    storage_type: GlobalName
    values: np.ndarray


@dataclass(frozen=True)
class FakeStorageView:
    """A legacy storage view: elements [offset, offset + count) of a root storage."""

    view_key: str
    root: FakeStorage
    offset: int
    count: int


class FakeTensor:
    def __init__(
        self,
        storage: FakeStorage | FakeStorageView,
        storage_offset: int,
        size: tuple[int, ...],
        stride: tuple[int, ...],
    ) -> None:
        self.arguments: tuple[Any, ...] = (storage, storage_offset, size, stride, False, OrderedDict())

    def __reduce__(self) -> tuple[Any, ...]:
        return (REBUILD_TENSOR_V2, self.arguments)


def save_global_name(pickler: Any, name: Any) -> None:
    """Write a GlobalName as a GLOBAL opcode; pickle itself would import the module to check it."""
    pickler.write(pickle.GLOBAL + f"{name.module}\n{name.name}\n".encode())


class CheckpointPickler(pickle._Pickler):
    """Pure-Python pickler that writes GlobalName as GLOBAL and storages as persistent ids.

    The pure-Python pickler is used because its per-type `dispatch` table can be extended.
    """

    dispatch: ClassVar = {**pickle._Pickler.dispatch, GlobalName: save_global_name}

    def __init__(self, file: io.BytesIO, zip_format: bool) -> None:
        super().__init__(file, protocol=2)
        self.zip_format = zip_format

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, FakeStorageView):
            root = obj.root
            view_metadata = (obj.view_key, obj.offset, obj.count)
            return ("storage", root.storage_type, root.key, "cpu", root.values.size, view_metadata)
        if isinstance(obj, FakeStorage):
            if self.zip_format:
                return ("storage", obj.storage_type, obj.key, "cpu", obj.values.size)
            return ("storage", obj.storage_type, obj.key, "cpu", obj.values.size, None)
        return None


def pickle_object(obj: Any, zip_format: bool = False) -> bytes:
    buffer = io.BytesIO()
    CheckpointPickler(buffer, zip_format).dump(obj)
    return buffer.getvalue()


def legacy_checkpoint_bytes(
    obj: Any, storages: list[FakeStorage], object_pickle: bytes | None = None
) -> bytes:
    """Magic, protocol, sys_info, object, storage keys, then each storage's count and bytes."""
    parts = [
        pickle.dumps(MAGIC_NUMBER, protocol=2),
        pickle.dumps(PROTOCOL_VERSION, protocol=2),
        pickle.dumps(SYS_INFO, protocol=2),
        pickle_object(obj) if object_pickle is None else object_pickle,
        pickle.dumps([storage.key for storage in storages], protocol=2),
    ]
    for storage in storages:
        parts.append(struct.pack("<q", storage.values.size))
        parts.append(storage.values.astype(storage.values.dtype.newbyteorder("<")).tobytes())
    return b"".join(parts)


# Shared fixtures: one float storage holding 0..19 and one int64 storage.
FLOATS = FakeStorage("1001", FLOAT_STORAGE, np.arange(20, dtype=np.float32))
LONGS = FakeStorage("1002", LONG_STORAGE, np.array([7, 42, -3], dtype=np.int64))


def sample_state_dict() -> OrderedDict[str, Any]:
    return OrderedDict(
        [
            ("contiguous", FakeTensor(FLOATS, 0, (2, 3), (3, 1))),
            # Non-zero storage offset: elements 5..10 as [3, 2].
            ("offset", FakeTensor(FLOATS, 5, (3, 2), (2, 1))),
            # Non-contiguous: a transposed [4, 3] view, i.e. stride (1, 3) on shape [3, 4].
            ("transposed", FakeTensor(FLOATS, 2, (3, 4), (1, 3))),
            # Every other element (stride 2) of a 1-D tensor.
            ("strided", FakeTensor(FLOATS, 1, (5,), (2,))),
            ("scalar", FakeTensor(LONGS, 1, (), ())),
            ("num_batches_tracked", FakeTensor(LONGS, 0, (), ())),
        ]
    )


def expected_values() -> dict[str, np.ndarray]:
    floats = FLOATS.values
    return {
        "contiguous": floats[0:6].reshape(2, 3),
        "offset": floats[5:11].reshape(3, 2),
        "transposed": floats[2:14].reshape(4, 3).T,
        "strided": floats[1:11:2],
        "scalar": np.array(42, dtype=np.int64),
        "num_batches_tracked": np.array(7, dtype=np.int64),
    }


def assert_state_dict_matches(loaded: dict[str, np.ndarray]) -> None:
    expected = expected_values()
    assert list(loaded) == list(expected)
    for key, expected_array in expected.items():
        assert loaded[key].dtype == expected_array.dtype, key
        assert loaded[key].shape == expected_array.shape, key
        np.testing.assert_array_equal(loaded[key], expected_array, err_msg=key)
        assert loaded[key].flags.c_contiguous, key


def test_legacy_round_trip_with_offsets_and_strides(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pth"
    path.write_bytes(legacy_checkpoint_bytes(sample_state_dict(), [FLOATS, LONGS]))

    loaded = torch_pickle.load_state_dict(path)

    assert_state_dict_matches(loaded)


def test_returned_arrays_are_independent_copies(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pth"
    path.write_bytes(legacy_checkpoint_bytes(sample_state_dict(), [FLOATS, LONGS]))

    loaded = torch_pickle.load_state_dict(path)
    loaded["contiguous"][0, 0] = 100.0

    # "offset" shares storage elements with "contiguous" in the file, not in memory.
    assert loaded["offset"][0, 0] == 5.0


def test_legacy_storage_view(tmp_path: Path) -> None:
    view = FakeStorageView("2001", FLOATS, offset=10, count=6)
    state = OrderedDict([("from_view", FakeTensor(view, 1, (2, 2), (2, 1)))])
    path = tmp_path / "view.pth"
    path.write_bytes(legacy_checkpoint_bytes(state, [FLOATS]))

    loaded = torch_pickle.load_state_dict(path)

    np.testing.assert_array_equal(loaded["from_view"], np.array([[11, 12], [13, 14]], dtype=np.float32))


def test_zip_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "zipped.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("zipped/data.pkl", pickle_object(sample_state_dict(), zip_format=True))
        archive.writestr("zipped/byteorder", "little")
        for storage in (FLOATS, LONGS):
            archive.writestr(f"zipped/data/{storage.key}", storage.values.tobytes())

    loaded = torch_pickle.load_state_dict(path)

    assert_state_dict_matches(loaded)


class CallsOsSystem:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo this must never run",))


@pytest.mark.parametrize(
    "malicious_pickle",
    [
        pickle.dumps(CallsOsSystem(), protocol=2),  # real global (posix.system on Linux)
        pickle_object(OrderedDict([("weight", GlobalName("os", "system"))])),
        pickle_object(GlobalName("builtins", "eval")),
    ],
    ids=["os.system-reduce", "os.system-global", "builtins.eval"],
)
def test_refuses_globals_outside_the_allow_list(tmp_path: Path, malicious_pickle: bytes) -> None:
    path = tmp_path / "malicious.pth"
    path.write_bytes(legacy_checkpoint_bytes(None, [], object_pickle=malicious_pickle))

    with pytest.raises(torch_pickle.UnsafePickleError):
        torch_pickle.load(path)


def test_refuses_tensor_reaching_past_its_storage(tmp_path: Path) -> None:
    state = OrderedDict([("too_long", FakeTensor(FLOATS, 15, (3, 2), (2, 1)))])
    path = tmp_path / "out_of_bounds.pth"
    path.write_bytes(legacy_checkpoint_bytes(state, [FLOATS]))

    with pytest.raises(torch_pickle.CheckpointFormatError, match="storage of 20 elements"):
        torch_pickle.load(path)


def test_refuses_wrong_magic_number(tmp_path: Path) -> None:
    path = tmp_path / "not_a_checkpoint.pth"
    path.write_bytes(pickle.dumps(12345, protocol=2) + pickle.dumps(PROTOCOL_VERSION, protocol=2))

    with pytest.raises(torch_pickle.CheckpointFormatError, match="magic number"):
        torch_pickle.load(path)


def test_refuses_truncated_storage(tmp_path: Path) -> None:
    path = tmp_path / "truncated.pth"
    path.write_bytes(legacy_checkpoint_bytes(sample_state_dict(), [FLOATS, LONGS])[:-4])

    with pytest.raises(torch_pickle.CheckpointFormatError, match="ends inside a storage"):
        torch_pickle.load(path)
