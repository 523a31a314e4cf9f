"""Storage: the table schemas of DESIGN.md, atomic writes, and reads that check the schema.

A storage is a local path or any URI pyarrow.fs understands (s3://, gs://, file://). This module
owns every byte written there; no other module opens storage files directly.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import posixpath
import re
import time
import uuid
import zipfile
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.json as pajson
import pyarrow.parquet as pq

from .digests import torch_file_digest
from .errors import StorageError

LOSSES_SCHEMA = pa.schema([
    ("unit", pa.string()),
    ("kind", pa.string()),  # gold | scratch | transfer
    ("target", pa.string()),
    ("sources", pa.list_(pa.string())),  # ["self"] gold, ["pixels"] scratch, ["random"] random
    ("order", pa.int8()),
    ("regime", pa.int32()),  # training images of the unit
    ("image", pa.string()),
    ("loss", pa.float32()),
])
LOSS_KINDS = ("gold", "scratch", "transfer")

AFFINITIES_SCHEMA = pa.schema([
    ("regime", pa.int32()),
    ("target", pa.string()),
    ("sources", pa.list_(pa.string())),
    ("order", pa.int8()),
    ("affinity", pa.float64()),
    ("quality", pa.float64()),  # win rate against the gold standard (`self`)
    ("gain", pa.float64()),  # win rate against the scratch network (`pixels`)
])

LOSSES_DIR = "losses"
AFFINITIES_FILE = "affinities.parquet"
RUN_FILE = "run.json"
DAMAGED_DIR = "damaged"  # damaged files a resume moved aside, at their own relative paths
REPORT_DIR = "report"  # the HTML report of a sweep
REPORT_ERROR = f"{REPORT_DIR}/error.txt"  # the traceback of a report step that failed (a bug)


def rows_table(rows: Sequence[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """`pa.Table.from_pylist(rows, schema)`, through Arrow's JSON reader while values allow.

    pyarrow's Python converters import pandas (when installed, as Ray has it) on first use:
    ~0.5 s of a one-second `taskonomy-ray solve`. Arrow's C++ JSON reader builds the same table
    without them; rows holding what JSON cannot spell (NaN, infinities) take the converters.
    """
    try:
        text = "\n".join(json.dumps(r, allow_nan=False) for r in rows)
    except (TypeError, ValueError):
        return pa.Table.from_pylist(list(rows), schema=schema)
    if not rows:
        return schema.empty_table()
    opts = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error")
    return pajson.read_json(io.BytesIO(text.encode()), parse_options=opts).select(schema.names)


def check_schema(table: pa.Table, schema: pa.Schema, what: str) -> pa.Table:
    """Return `table` cast to `schema`, or raise StorageError naming the missing/odd columns."""
    missing = [n for n in schema.names if n not in table.column_names]
    if missing:
        raise StorageError(
            f"{what}: missing columns {missing}; expected {schema.names}. "
            "Was it written by another version? Re-run the step that writes it."
        )
    try:
        return table.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise StorageError(f"{what}: columns have the wrong types ({e}); expected {schema}") from e


def bad_scores(table: pa.Table, first_line: int | None = None) -> str | None:
    """The first row of an affinities table whose scores cannot be right, said; None if none is.

    A score may be missing (null: the published table's unranked transfers), but one that is
    there must be finite, an affinity >= 0 and a win rate (quality, gain) within [0, 1]; a
    transfer (regime, target, sources) appears once. The solver would skip or use such a row
    as it is, and answer otherwise without a word. `first_line`: name rows by the line of a
    file they came from (a CSV's first row is its line 2), not by their place in the table.
    """
    seen: set[tuple] = set()
    for i, r in enumerate(table.select(
            ["regime", "target", "sources", "affinity", "quality", "gain"]).to_pylist()):
        where = f"row {i + 1}" if first_line is None else f"line {i + first_line}"
        name = f"{where} ({r['regime']}, {'+'.join(r['sources'])} -> {r['target']})"
        for col, top in (("affinity", math.inf), ("quality", 1.0), ("gain", 1.0)):
            v = r[col]
            if v is not None and not (math.isfinite(v) and 0.0 <= v <= top):
                return f"{name} has {col} {v}, outside " + (
                    "[0, 1]" if top == 1.0 else "the finite non-negative numbers")
        key = (r["regime"], r["target"], tuple(r["sources"]))
        if key in seen:
            return f"{name} is listed twice"
        seen.add(key)
    return None


def losses_table(unit: str, kind: str, target: str, sources: Sequence[str], regime: int,
                 images: Sequence[str], losses: Sequence[float] | np.ndarray) -> pa.Table:
    """One unit's per-image losses as a LOSSES_SCHEMA table; non-finite losses are refused."""
    if kind not in LOSS_KINDS:
        raise StorageError(f"unit {unit}: kind must be one of {LOSS_KINDS}, got {kind!r}")
    loss = np.asarray(losses, dtype=np.float32)
    if loss.shape != (len(images),):
        raise StorageError(f"unit {unit}: {loss.shape[0] if loss.ndim else 0} losses for "
                           f"{len(images)} images")
    bad = ~np.isfinite(loss)
    if bad.any():
        first = [images[i] for i in np.flatnonzero(bad)[:3]]
        raise StorageError(f"unit {unit}: {int(bad.sum())} non-finite losses (e.g. images "
                           f"{first}); the training diverged: lower the learning rate or check "
                           "the labels")
    n = len(images)
    return pa.table({
        "unit": pa.array([unit] * n, pa.string()),
        "kind": pa.array([kind] * n, pa.string()),
        "target": pa.array([target] * n, pa.string()),
        "sources": pa.array([list(sources)] * n, pa.list_(pa.string())),
        "order": pa.array([len(sources)] * n, pa.int8()),
        "regime": pa.array([regime] * n, pa.int32()),
        "image": pa.array(list(images), pa.string()),
        "loss": pa.array(loss, pa.float32()),
    }, schema=LOSSES_SCHEMA)


def redact(uri: str) -> str:
    """`uri` without credentials (user:secret@ and query parameters), for messages and pages."""
    parts = urlsplit(uri)
    if not parts.scheme or "://" not in uri:
        return uri
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # what makes a storage string a URI


# The digest of what this process last wrote at each path (most recent WRITTEN_KEPT): a unit
# digests its outputs without reading them back (`Storage.digest`; on an object store, a copy).
_WRITTEN: OrderedDict[str, str] = OrderedDict()
WRITTEN_KEPT = 1024


def forget_written(storage: Storage, rels: Sequence[str]) -> None:
    """Drop what this process remembers writing at `rels` (digest them from storage instead)."""
    for rel in rels:
        _WRITTEN.pop(storage.uri_for(rel), None)


class Storage:
    """A run's storage root on any pyarrow filesystem, with atomic writes."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.display = redact(uri)  # what messages, logs and reports show
        try:
            self.fs, self.root = pafs.FileSystem.from_uri(uri)
        except (pa.ArrowInvalid, ValueError) as e:
            if _SCHEME.match(uri):  # a URI pyarrow cannot open (a typo: s4://, s3:/, file://x)
                raise StorageError(
                    f"cannot open storage {redact(uri)!r}: {str(e).replace(uri, redact(uri))}; "
                    "give a local path or a URI "
                    "pyarrow opens: s3://bucket/path, gs://bucket/path, hdfs://host/path, "
                    "file:///absolute/path") from None
            # A plain relative or absolute local path.
            import os

            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(uri)
        except OSError as e:
            raise StorageError(f"cannot open storage {redact(uri)!r}: {e}; check the URI and the "
                               "credentials in the environment") from e
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        """The filesystem path of `parts` below the root."""
        return posixpath.join(self.root, *parts)

    def uri_for(self, rel: str) -> str:
        """A URI (or absolute local path) of `rel`, for tools that take one (Ray Train)."""
        if self.local:
            return self.path(rel)
        return self.uri.rstrip("/") + "/" + rel

    def exists(self, *parts: str) -> bool:
        """Whether a file or folder exists below the root."""
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def ensure_writable(self) -> None:
        """Create the root and prove it is writable, or raise StorageError saying how to fix."""
        probe = self.path(f".write-probe-{uuid.uuid4().hex}")
        try:
            self.fs.create_dir(self.root, recursive=True)
            with self.fs.open_output_stream(probe) as f:
                f.write(b"ok")
            self.fs.delete_file(probe)
        except OSError as e:
            raise StorageError(
                f"storage {self.display!r} is not writable ({e}); choose another --storage path or "
                "fix its permissions / credentials"
            ) from e

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write `data` at `rel` atomically: temp + rename locally, one PUT on object stores."""
        dest = self.path(rel)
        _WRITTEN.pop(self.uri_for(rel), None)
        try:
            self.fs.create_dir(posixpath.dirname(dest), recursive=True)
            if not self.local:  # an object store makes a whole object visible at close
                with self.fs.open_output_stream(dest) as f:
                    f.write(data)
            else:
                tmp = posixpath.join(posixpath.dirname(dest),
                                     f".{posixpath.basename(dest)}.{uuid.uuid4().hex}.tmp")
                with self.fs.open_output_stream(tmp) as f:
                    f.write(data)
                self.fs.move(tmp, dest)
        except OSError as e:
            raise StorageError(f"cannot write {dest} in storage {self.display!r}: {e}; check that "
                               "the path is writable and has space") from e
        _WRITTEN[self.uri_for(rel)] = hashlib.sha256(data).hexdigest()[:32]
        while len(_WRITTEN) > WRITTEN_KEPT:
            _WRITTEN.popitem(last=False)

    def read_bytes(self, rel: str) -> bytes:
        """The bytes at `rel`; StorageError if missing."""
        try:
            with self.fs.open_input_stream(self.path(rel)) as f:
                return bytes(f.read())
        except FileNotFoundError:
            raise StorageError(f"{self.path(rel)} not found in storage {self.display!r}") from None
        except OSError as e:
            raise StorageError(f"cannot read {self.path(rel)}: {e}") from e

    def digest(self, rel: str) -> str:
        """A content digest of the file at `rel` (SHA-256, read in chunks); StorageError if missing.

        The ledger keeps it per finished unit, so a resume can tell whether a unit that ran again
        wrote what its dependents had read (`Scheduler.changed_inputs`). A torch file's digest is
        of what it holds (`torch_file_digest`): the same weights saved twice can differ in bytes.
        """
        if rel.endswith(".pt"):  # (read whole: a zip reader's many small reads are requests)
            data = self.read_bytes(rel)
            return torch_file_digest(data) or hashlib.sha256(data).hexdigest()[:32]
        if self.uri_for(rel) in _WRITTEN:
            return _WRITTEN[self.uri_for(rel)]
        h = hashlib.sha256()
        try:
            with self.fs.open_input_stream(self.path(rel)) as f:
                while chunk := f.read(1 << 24):
                    h.update(chunk)
        except FileNotFoundError:
            raise StorageError(f"{self.path(rel)} not found in storage {self.display!r}") from None
        except OSError as e:
            raise StorageError(f"cannot read {self.path(rel)}: {e}") from e
        return h.hexdigest()[:32]

    def delete(self, rel: str) -> bool:
        """Remove the file at `rel` if it exists; whether there was one."""
        _WRITTEN.pop(self.uri_for(rel), None)
        try:
            self.fs.delete_file(self.path(rel))
        except FileNotFoundError:
            return False
        except OSError as e:
            if not self.exists(rel):
                return False
            raise StorageError(f"cannot delete {self.path(rel)} in storage {self.display!r}: {e}; "
                               "check the path's permissions") from e
        return True

    def damage(self, rel: str) -> str | None:
        """Why the file at `rel` is not a whole file of its kind, or None if it looks whole.

        Cheap, from the part a truncated copy loses: a Parquet file's footer, a zip's (`.npz`,
        torch's `.pt`) central directory; JSON documents, which are small, are parsed. Other
        files only need to exist. A file that cannot be read at all (permissions) is an error,
        not damage: it is not moved aside.
        """
        kind = rel.rsplit(".", 1)[-1]
        if kind not in ("json", "parquet", "npz", "pt"):
            return None if self.exists(rel) else "missing"
        try:
            with self.fs.open_input_file(self.path(rel)) as f:
                if kind == "json":
                    json.loads(f.read())
                elif kind == "parquet":
                    pq.read_metadata(f)
                elif not zipfile.ZipFile(f).namelist():
                    return "an empty archive"
        except FileNotFoundError:
            return "missing"
        except PermissionError as e:
            raise StorageError(f"cannot read {self.path(rel)} in storage {self.display!r}: {e}; "
                               "fix its permissions") from e
        except (OSError, ValueError, zipfile.BadZipFile) as e:  # ArrowInvalid is a ValueError
            what = {"json": "not valid JSON", "parquet": "not a whole Parquet file"}.get(
                kind, "not a whole zip archive")
            return f"{what} ({type(e).__name__}: {e})"
        return None

    def set_aside(self, rel: str) -> str:
        """Move a damaged file out of the way (kept, not deleted); its new path.

        Under `damaged/`, not beside it: `losses/` stays a folder of whole tables, which
        readers of the whole folder (pandas, pyarrow, duckdb) take as one dataset.
        """
        stamp = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
        dest = f"{DAMAGED_DIR}/{rel}.{stamp}"
        self.move(rel, dest, "the damaged")
        return dest

    def move(self, rel: str, dest: str, what: str = "") -> None:
        """Move the file at `rel` to `dest` (replacing a file there); StorageError if it fails."""
        _WRITTEN.pop(self.uri_for(rel), None)
        _WRITTEN.pop(self.uri_for(dest), None)
        try:
            self.fs.create_dir(self.path(posixpath.dirname(dest)), recursive=True)
            self.fs.move(self.path(rel), self.path(dest))
        except OSError as e:
            raise StorageError(f"cannot move {what + ' ' if what else ''}{self.path(rel)} to "
                               f"{self.path(dest)} in storage {self.display!r}: {e}; check the "
                               "storage's permissions, or move it by hand, and resume") from e

    def write_json(self, rel: str, obj: Any) -> None:
        """Write a JSON document atomically."""
        self.write_bytes(rel, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())

    def read_json(self, rel: str) -> Any:
        """Read a JSON document; a corrupt one is a StorageError naming it."""
        data = self.read_bytes(rel)
        try:
            return json.loads(data)
        except ValueError as e:
            raise StorageError(f"corrupt JSON {self.path(rel)}: {e}; delete it and resume the "
                               "sweep, which writes it again") from e

    def read_record(self, rel: str, *keys: str) -> dict[str, Any]:
        """Read a JSON object that holds `keys`; anything else is damage, named with the fix."""
        doc = self.read_json(rel)
        lacks = [k for k in keys if k not in doc] if isinstance(doc, dict) else None
        if lacks is None or lacks:
            kind = {list: "array", str: "string", bool: "boolean", int: "number",
                    float: "number", type(None): "null"}.get(type(doc), type(doc).__name__)
            got = f"an object without {lacks}" if lacks else f"a JSON {kind}, not an object"
            raise StorageError(f"{self.path(rel)} is damaged ({got}); delete it and resume the "
                               "sweep, which writes it again")
        return doc

    def write_table(self, rel: str, table: pa.Table) -> None:
        """Write a Parquet table atomically."""
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        self.write_bytes(rel, sink.getvalue().to_pybytes())

    def read_table(self, rel: str, schema: pa.Schema) -> pa.Table:
        """Read a Parquet file and check it against `schema`."""
        try:  # ParquetFile, not pq.read_table: the dataset reader imports pandas (rows_table)
            with self.fs.open_input_file(self.path(rel)) as f:
                table = pq.ParquetFile(f, pre_buffer=True).read()  # pre_buffer: as read_table
        except FileNotFoundError:
            raise StorageError(f"{self.path(rel)} not found in storage {self.display!r}") from None
        except (OSError, pa.ArrowInvalid) as e:
            raise StorageError(f"corrupt Parquet file {self.path(rel)}: {e}; resume the sweep "
                               "that wrote it (`taskonomy-ray sweep`, same workflow and "
                               "--storage): it moves the file aside and runs its unit again"
                               ) from e
        return check_schema(table, schema, self.path(rel))

    def list(self, rel: str, suffix: str = "") -> list[str]:
        """Sorted base names of the files directly in folder `rel` (hidden temp files skipped)."""
        sel = pafs.FileSelector(self.path(rel), allow_not_found=True)
        names = [posixpath.basename(i.path) for i in self.fs.get_file_info(sel)
                 if i.type == pafs.FileType.File]
        return sorted(n for n in names if n.endswith(suffix) and not n.startswith("."))

    # --- the two tables of DESIGN.md

    def write_losses(self, unit: str, table: pa.Table) -> None:
        """One unit's per-image losses, as `losses/<unit>.parquet`."""
        self.write_table(f"{LOSSES_DIR}/{unit}.parquet",
                         check_schema(table, LOSSES_SCHEMA, f"losses of {unit}"))

    def read_losses(self, units: Sequence[str] | None = None) -> pa.Table:
        """The losses of `units` that wrote theirs (default: every unit's), concatenated.

        A sweep passes its plan's units: files of units a config change replaced stay in
        storage (nothing computed is deleted) but are not read as if they were current.
        """
        files = self.list(LOSSES_DIR, ".parquet")
        if units is not None:
            files = sorted(set(files) & {f"{u}.parquet" for u in units})
        if not files:
            raise StorageError(f"no per-image losses under {self.path(LOSSES_DIR)}; run "
                               "`taskonomy-ray sweep` first")
        return pa.concat_tables([self.read_table(f"{LOSSES_DIR}/{f}", LOSSES_SCHEMA)
                                 for f in files])

    def write_affinities(self, table: pa.Table) -> None:
        """The AHP affinities table (stage 3)."""
        self.write_table(AFFINITIES_FILE, check_schema(table, AFFINITIES_SCHEMA, "affinities"))

    def read_affinities(self) -> pa.Table:
        """The AHP affinities table, schema-checked."""
        missing = self.affinities_missing()
        if missing:
            raise StorageError(missing)
        table = self.read_table(AFFINITIES_FILE, AFFINITIES_SCHEMA)
        bad = bad_scores(table)
        if bad:
            raise StorageError(f"{self.path(AFFINITIES_FILE)}: {bad}; delete it and taxonomy.json "
                               "and resume the sweep, whose analysis computes them again from "
                               "the per-image losses")
        return table

    def affinities_missing(self) -> str | None:
        """Why there is no affinities table here, with the fix (None if there is one)."""
        if self.exists(AFFINITIES_FILE):
            return None
        if not self.exists(RUN_FILE):
            return (f"no sweep found in {self.display!r} (no {RUN_FILE}): give the storage of a "
                    "sweep (`taskonomy-ray sweep CONFIG --storage ...`), or solve the published "
                    "results with --published")
        return (f"{self.path(AFFINITIES_FILE)} not found in storage {self.display!r}: the sweep "
                "has not reached its analysis stage; finish (or resume) it with `taskonomy-ray "
                "sweep`, or solve the published results with --published")
