"""Digests of what a file holds, alike for alike contents even where its bytes differ.

Pure Python: a torch file's pickle is read without importing torch or anything it names.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import zipfile
from typing import Any


class _Stub:
    """Anything a pickle names, as its name and what it was built from (nothing is imported)."""

    def __init__(self, name: str, args: tuple[Any, ...] = ()) -> None:
        self.name, self.args, self.state = name, args, None
        self.items: list[Any] = []

    def __call__(self, *args: Any) -> _Stub:
        return _Stub(self.name, args)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items.append((key, value))

    def append(self, value: Any) -> None:
        self.items.append(value)

    def extend(self, values: Any) -> None:
        self.items.extend(values)

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _canonical(value: Any) -> str:
    """A text of `value` alike for alike contents (sets sorted: their order varies by process)."""
    if isinstance(value, _Stub):
        return (f"{value.name}({_canonical(value.args)}){_canonical(value.items)}"
                f"{_canonical(value.state)}")
    if isinstance(value, dict):
        return "{" + ",".join(f"{_canonical(k)}:{_canonical(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return ("[" if isinstance(value, list) else "(") + ",".join(map(_canonical, value)) + ")"
    if isinstance(value, (set, frozenset)):
        return "set{" + ",".join(sorted(map(_canonical, value))) + "}"
    return repr(value)


class _ContentUnpickler(pickle.Unpickler):
    """Reads a torch file's pickle as plain values, each storage as its type and bytes' digest."""

    def __init__(self, data: bytes, records: dict[str, str]) -> None:
        super().__init__(io.BytesIO(data))
        self.records = records

    def find_class(self, module: str, name: str) -> Any:
        return _Stub(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:  # ("storage", type, key, location, numel)
        return ("storage", _canonical(pid[1]), self.records[str(pid[2])], pid[4:])


# Format errors of a file that is not a torch zip file, or a pickle beyond plain values (its
# bytes are digested instead); I/O errors are not among them.
_NOT_TORCH = (zipfile.BadZipFile, StopIteration, pickle.UnpicklingError, EOFError, KeyError,
              IndexError, ValueError, TypeError, AttributeError)


def torch_file_digest(data: bytes) -> str | None:
    """A digest of what a torch zip file holds, alike for alike contents; None if not one.

    torch.save writes the same weights in other bytes when their Python objects were made
    otherwise (a state loaded from a checkpoint, or still in memory): the pickle's memo differs.
    This reads the pickle without importing anything, by value, with each tensor storage by its
    type and its bytes' digest.
    """
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
        names = z.namelist()
        pkl = next(n for n in names if n.endswith("/data.pkl"))
        prefix = pkl[: -len("data.pkl")] + "data/"
        records = {n[len(prefix):]: hashlib.sha256(z.read(n)).hexdigest()
                   for n in names if n.startswith(prefix)}
        value = _ContentUnpickler(z.read(pkl), records).load()
    except _NOT_TORCH:
        return None
    return hashlib.sha256(_canonical(value).encode()).hexdigest()[:32]
