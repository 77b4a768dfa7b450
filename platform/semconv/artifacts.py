"""The run directory: versioned artifacts that stages exchange (the stage table in README.md, "The pipeline").

An artifact is a directory ``<run_dir>/<name>/`` holding its files plus ``_SUCCESS``, a JSON
manifest written last. A stage writes into a temporary sibling (``<name>.tmp-<uuid>``) and renames
it into place only when complete, so a crash never leaves a half-written artifact under the final
name and never touches an earlier complete one. Sharded artifacts that must resume shard by shard
(``precache/``) write each shard atomically inside ``<name>.partial/`` instead.

``run_dir`` is a local path or any ``pyarrow.fs`` URI (``s3://``, ``gs://``, ``hdfs://``). Files
are produced in a local scratch directory and copied to a remote run directory when complete;
:meth:`RunDir.local` gives a local copy of a remote artifact for libraries that need paths
(safetensors, Hugging Face).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

SUCCESS = "_SUCCESS"
CHECKPOINTS = "_checkpoints"


class ArtifactError(RuntimeError):
    """A missing or incomplete artifact."""


def filesystem(uri: str) -> tuple[pafs.FileSystem, str, bool]:
    """``(filesystem, path, is_local)`` for a local path, a ``file://`` URI or any ``pyarrow.fs``
    URI (``s3://``, ``gs://``, ``mock://``): the one place the product resolves where data lives."""
    if "://" in uri and not uri.startswith("file://"):
        fs, path = pafs.FileSystem.from_uri(uri)
        return fs, path.rstrip("/"), False
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    return pafs.LocalFileSystem(), str(Path(path).expanduser().resolve()), True


def link_or_copy(fs: pafs.FileSystem, src: str, dst: str | Path) -> None:
    """Put ``fs``'s file ``src`` at the local path ``dst``: a hard link when both are on this
    machine's filesystem (no copy; publishing never rewrites the source), else a copy."""
    if isinstance(fs, pafs.LocalFileSystem):
        try:
            Path(dst).hardlink_to(src)
        except OSError:
            shutil.copyfile(src, dst)
    else:
        pafs.copy_files(src, str(dst), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write JSON to a temp file beside ``path`` and rename it over (local files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


class RunDir:
    """Paths, completeness checks and atomic writes for one run directory."""

    def __init__(self, uri: str | Path, lineage: dict[str, Any] | None = None):
        self.uri = str(uri)
        self.lineage = lineage  # added to every manifest written here (semconv.lineage.stage_run)
        self.fs, self.root, self.is_local = filesystem(self.uri)
        if self.is_local:
            Path(self.root).mkdir(parents=True, exist_ok=True)
        else:
            self.fs.create_dir(self.root, recursive=True)

    def __repr__(self) -> str:
        return f"RunDir({self.uri!r})"

    def path(self, name: str) -> str:
        """The artifact's path inside the filesystem (a local absolute path when local)."""
        return f"{self.root}/{name}"

    @property
    def checkpoint_root(self) -> str:
        """Where every Ray Train run keeps its in-progress checkpoints (a URI when remote)."""
        return self.path(CHECKPOINTS) if self.is_local else f"{self.uri.rstrip('/')}/{CHECKPOINTS}"

    def _exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def is_complete(self, name: str) -> bool:
        return self._exists(f"{self.path(name)}/{SUCCESS}")

    def manifest(self, name: str) -> dict[str, Any]:
        if not self.is_complete(name):
            raise ArtifactError(
                f"artifact {name!r} is missing or incomplete in {self.uri} "
                f"(no {SUCCESS}); run the stage that produces it first"
            )
        with self.fs.open_input_stream(f"{self.path(name)}/{SUCCESS}") as f:
            return json.loads(f.read().decode())

    def require(self, *names: str) -> None:
        for name in names:
            self.manifest(name)

    @contextlib.contextmanager
    def writing(self, name: str, manifest: dict[str, Any] | None = None) -> Iterator[Path]:
        """Yield a local scratch directory; on clean exit it becomes ``<name>/`` atomically.

        The manifest (``_SUCCESS``) is written last with ``created_at``, a unique ``build`` id (two
        builds within one second differ) and the stage's ``lineage`` (when this RunDir carries one)
        added. An exception leaves
        the previous complete artifact, if any, untouched, and removes the scratch directory.
        """
        if self.is_local:
            tmp = Path(f"{self.path(name)}.tmp-{uuid.uuid4().hex}")
            tmp.mkdir(parents=True)
        else:
            tmp = Path(tempfile.mkdtemp(prefix=f"semconv-{name.replace('/', '_')}-"))
        try:
            yield tmp
            meta = dict(manifest or {})
            meta.setdefault("artifact", name)
            if self.lineage is not None:
                meta["lineage"] = self.lineage
            meta["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            meta["build"] = uuid.uuid4().hex[:12]
            write_json_atomic(tmp / SUCCESS, meta)
            self._publish(tmp, name)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _publish(self, tmp: Path, name: str) -> None:
        final = self.path(name)
        if self.is_local:
            old = None
            if Path(final).exists():
                old = Path(f"{final}.old-{uuid.uuid4().hex}")
                os.replace(final, old)
            Path(final).parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
            return
        # Copy data files first and the manifest last, so the artifact reads as complete only
        # once every file is there (object stores have no directory rename).
        files = sorted(p for p in tmp.rglob("*") if p.is_file() and p.name != SUCCESS)
        if self._exists(final):
            self.fs.delete_dir(final)
        for p in files + [tmp / SUCCESS]:
            rel = p.relative_to(tmp).as_posix()
            self.fs.create_dir(f"{final}/{Path(rel).parent.as_posix()}", recursive=True)
            pafs.copy_files(str(p), f"{final}/{rel}", destination_filesystem=self.fs)

    def local(self, name: str) -> Path:
        """A local directory with the artifact's files (the artifact itself when local).

        A remote artifact is copied once per manifest version (re-checked on every call).
        """
        self.manifest(name)
        if self.is_local:
            return Path(self.path(name))
        # versioned by the remote manifest, copied atomically into a private cache
        from semconv.serving.remote_cache import fetch_artifact

        return fetch_artifact(self.fs, self.path(name), f"{self.uri.rstrip('/')}/{name}")

    # ---- tables -------------------------------------------------------------------------
    def write_table(
        self, name: str, table: pa.Table, num_shards: int = 1, manifest: dict[str, Any] | None = None
    ) -> str:
        """Write a Parquet table artifact in ``num_shards`` files (row order kept)."""
        meta = {"rows": table.num_rows, "schema": str(table.schema), **(manifest or {})}
        with self.writing(name, meta) as tmp:
            n = max(1, min(num_shards, table.num_rows or 1))
            step = -(-table.num_rows // n) if table.num_rows else 0
            for i in range(n):
                part = table.slice(i * step, step) if step else table
                pq.write_table(part, tmp / f"part-{i:05d}.parquet")
        return self.path(name)

    def parquet_files(self, name: str) -> list[str]:
        """The artifact's Parquet files (filesystem paths), in shard order."""
        return sorted(
            f.path
            for f in self.fs.get_file_info(pafs.FileSelector(self.path(name), recursive=True))
            if f.type == pafs.FileType.File and f.path.endswith(".parquet")
        )

    def read_table(self, name: str, columns: list[str] | None = None) -> pa.Table:
        self.manifest(name)
        files = self.parquet_files(name)
        if not files:
            return pa.table({})
        return pa.concat_tables(
            [pq.read_table(p, columns=columns, filesystem=self.fs) for p in files]
        )
