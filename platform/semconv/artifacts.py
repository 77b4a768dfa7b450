"""The run directory: versioned artifacts that stages exchange (the stage table in docs/pipeline.md).

An artifact is a directory ``<run_dir>/<name>/`` whose ``_SUCCESS`` is its manifest: a JSON
object with a unique ``build`` id and ``files``, every file of the build with its size (and row
count for Parquet). Readers resolve the manifest once and read only the files it lists, so a
build is immutable once committed and the manifest is the one pointer that commits it:

- **local**: a stage writes into a temporary sibling (``<name>.tmp-<uuid>``) and renames it into
  place when complete; the rename swaps the whole artifact at once.
- **remote** (any ``pyarrow.fs`` URI: ``s3://``, ``gs://``, ``hdfs://``; object stores have no
  rename): the files are uploaded under a fresh prefix ``<name>/_builds/<build>/`` and the
  manifest, naming that prefix as ``root``, is written last over ``<name>/_SUCCESS``. A publish
  that dies midway leaves the previous manifest, and every file it names, in place. The build
  that the replaced manifest named is kept for readers that resolved it just before; older builds
  are deleted by the next publish.

Nested artifacts (a serving version holds ``items/``, ``precache/``...) are files of the outer
build, with their own manifests; ``RunDir(<version URI>)`` resolves the version's manifest and
roots itself in its build. Sharded artifacts that must resume shard by shard (``precache/``)
write each shard atomically inside ``<name>.partial/`` first. :meth:`RunDir.local` gives a local
copy of a remote artifact for libraries that need paths (safetensors, Hugging Face).
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
BUILDS = "_builds"  # remote: <name>/_builds/<build>/ holds one build's files


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


def join_uri(uri: str, name: str) -> str:
    """``uri`` with ``/name`` appended to its path, any ``?query`` (``endpoint_override=...``) kept."""
    base, q, query = uri.partition("?")
    return f"{base.rstrip('/')}/{name}{q}{query}"


def list_files(root: Path) -> dict[str, dict[str, int]]:
    """Every file under local ``root`` except its own manifest: ``{relpath: {"bytes", "rows"}}``
    (``rows`` for Parquet, from the footer)."""
    out: dict[str, dict[str, int]] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if not p.is_file() or rel == SUCCESS:
            continue
        out[rel] = {"bytes": p.stat().st_size}
        if p.suffix == ".parquet":
            out[rel]["rows"] = pq.ParquetFile(p).metadata.num_rows
    return out


def build_root(path: str, meta: dict[str, Any]) -> str:
    """Where the files of the build that the manifest ``meta`` of the artifact at ``path`` names
    live: ``<path>/_builds/<build>`` on an object store, ``path`` itself locally."""
    return f"{path}/{meta['root']}" if meta.get("root") else path


def build_files(fs: pafs.FileSystem, path: str, meta: dict[str, Any]) -> tuple[str, list[str]]:
    """``(files root, relative paths)`` of the build ``meta`` names, as the manifest lists them;
    listed from storage (temporaries left out) for a manifest written before manifests listed
    files."""
    root = build_root(path, meta)
    if "files" in meta:
        return root, sorted(meta["files"])
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    rels = [i.path[len(root) + 1:] for i in infos if i.type == pafs.FileType.File]
    return root, sorted(r for r in rels if r != SUCCESS and not (Path(r).name.startswith(".") and ".tmp-" in r))


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
        elif (own := self._read_manifest(f"{self.root}/{SUCCESS}")) is not None and own.get("root"):
            self.root = f"{self.root}/{own['root']}"  # a remote artifact used as a run dir: its build
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
        return self.path(CHECKPOINTS) if self.is_local else join_uri(self.uri, CHECKPOINTS)

    def _exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def _read_manifest(self, path: str) -> dict[str, Any] | None:
        try:
            with self.fs.open_input_stream(path) as f:
                return json.loads(f.read().decode())
        except (FileNotFoundError, OSError):
            return None

    def is_complete(self, name: str) -> bool:
        return self._exists(f"{self.path(name)}/{SUCCESS}")

    def manifest(self, name: str) -> dict[str, Any]:
        meta = self._read_manifest(f"{self.path(name)}/{SUCCESS}")
        if meta is None:
            raise ArtifactError(
                f"artifact {name!r} is missing or incomplete in {self.uri} "
                f"(no {SUCCESS}); run the stage that produces it first"
            )
        return meta

    def files_path(self, name: str, manifest: dict[str, Any] | None = None) -> str:
        """Where the files of the artifact's committed build live (``manifest``: one already read,
        so that a caller reads the very build it resolved)."""
        return build_root(self.path(name), manifest if manifest is not None else self.manifest(name))

    def file(self, name: str, rel: str, manifest: dict[str, Any] | None = None) -> str:
        """The path of file ``rel`` of the artifact's committed build."""
        return f"{self.files_path(name, manifest)}/{rel}"

    def files(self, name: str, manifest: dict[str, Any] | None = None) -> list[str]:
        """The committed build's files (filesystem paths), as :func:`build_files` finds them."""
        root, rels = build_files(self.fs, self.path(name), manifest if manifest is not None else self.manifest(name))
        return [f"{root}/{rel}" for rel in rels]

    def require(self, *names: str) -> None:
        for name in names:
            self.manifest(name)

    @contextlib.contextmanager
    def writing(self, name: str, manifest: dict[str, Any] | None = None) -> Iterator[Path]:
        """Yield a local scratch directory; on clean exit it is committed as ``<name>/``.

        The manifest (``_SUCCESS``) is written last with ``created_at``, a unique ``build`` id (two
        builds within one second differ), the ``files`` list and the stage's ``lineage`` (when
        this RunDir carries one) added. An exception leaves the previous complete artifact, if
        any, untouched, and removes the scratch directory.
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
            meta["files"] = list_files(tmp)
            meta.pop("root", None)  # a copied manifest names its own build's prefix; set on upload
            write_json_atomic(tmp / SUCCESS, meta)
            self._publish(tmp, name, meta)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _publish(self, tmp: Path, name: str, meta: dict[str, Any]) -> None:
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
        previous = self._read_manifest(f"{final}/{SUCCESS}")
        root = f"{BUILDS}/{meta['build']}"
        for rel in meta["files"]:  # nested manifests included: they are files of this build
            dst = f"{final}/{root}/{rel}"
            self.fs.create_dir(dst.rsplit("/", 1)[0], recursive=True)
            pafs.copy_files(str(tmp / rel), dst, destination_filesystem=self.fs)
        self._commit(final, {**meta, "root": root})
        self._collect(final, keep={root, (previous or {}).get("root")}, legacy=previous is not None
                      and bool(previous.get("root")))

    def _commit(self, final: str, meta: dict[str, Any]) -> None:
        """Write the manifest, one object, last: readers see the new build from here on."""
        with self.fs.open_output_stream(f"{final}/{SUCCESS}") as f:
            f.write(json.dumps(meta, indent=2, sort_keys=True, default=str).encode())

    def _collect(self, final: str, keep: set[str | None], legacy: bool) -> None:
        """Delete the builds under remote ``final`` that neither the new manifest nor the one it
        replaced names (a crashed publish's upload, builds two or more publishes old), and
        ``legacy`` files written in place by a manifest without ``root``."""
        for info in self.fs.get_file_info(pafs.FileSelector(final)):
            if info.base_name == SUCCESS:
                continue
            if info.base_name == BUILDS:
                for build in self.fs.get_file_info(pafs.FileSelector(info.path)):
                    if f"{BUILDS}/{build.base_name}" not in keep:
                        self.fs.delete_dir(build.path)
            elif legacy:
                (self.fs.delete_dir if info.type == pafs.FileType.Directory else self.fs.delete_file)(info.path)

    def local(self, name: str) -> Path:
        """A local directory with the artifact's files (the artifact itself when local).

        A remote artifact is copied once per manifest version (re-checked on every call).
        """
        self.manifest(name)
        if self.is_local:
            return Path(self.path(name))
        # versioned by the remote manifest, copied atomically into a private cache
        from semconv.remote_cache import fetch_artifact

        return fetch_artifact(self.fs, self.path(name), join_uri(self.uri, name))

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

    def parquet_files(self, name: str, manifest: dict[str, Any] | None = None) -> list[str]:
        """The artifact's Parquet files (filesystem paths), in shard order."""
        return [f for f in self.files(name, manifest) if f.endswith(".parquet")]

    def read_table(self, name: str, columns: list[str] | None = None) -> pa.Table:
        files = self.parquet_files(name, self.manifest(name))
        if not files:
            return pa.table({})
        return pa.concat_tables(
            [pq.read_table(p, columns=columns, filesystem=self.fs) for p in files]
        )
