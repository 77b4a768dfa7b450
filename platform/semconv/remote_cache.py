"""A local copy of a remote artifact, one per committed build, published atomically.

Libraries that need paths (safetensors, Hugging Face, the memory-mapped precache) read a remote
artifact (``s3://...``) from a local copy. The copy lives in ``<cache root>/<name>-<uri>-<key>``:
``uri`` hashes the artifact's URI and ``key`` its manifest bytes, so an artifact republished at
the same URI gets a new entry and every replica that re-checks sees the new build. The files the
manifest lists (under its ``root``, see :mod:`semconv.artifacts`) are copied into a private
temporary sibling, the manifest last, and the directory is renamed into place: a reader never
sees ``_SUCCESS`` before the files, and two processes copying the same build race harmlessly
(the first rename wins). Copies of older builds of the same URI are deleted, the newest
:data:`KEEP` kept (a replica may still serve the one before a switch).

The cache root is private to the user (mode 0700, owner checked), never a predictable name in a
world-writable directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pyarrow.fs as pafs

from semconv.artifacts import SUCCESS, build_files

KEEP = 2  # local copies kept per artifact URI: the newest build and the one before it


class RemoteCacheError(RuntimeError):
    """A remote artifact that cannot be copied consistently (missing, changed during the copy)."""


def default_cache_root() -> Path:
    """``$SEMCONV_CACHE_DIR``, else ``$XDG_CACHE_HOME/semconv``, else ``~/.cache/semconv``."""
    if os.environ.get("SEMCONV_CACHE_DIR"):
        return Path(os.environ["SEMCONV_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "semconv"


def private_dir(path: str | Path) -> Path:
    """Create ``path`` (mode 0700) and check that it is ours and not writable by others."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = p.stat()
    if st.st_uid != os.getuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise RemoteCacheError(f"cache directory {p} is not private to this user (owner or mode); "
                               "set SEMCONV_CACHE_DIR to a directory only you can write")
    return p


def read_manifest(fs: pafs.FileSystem, path: str) -> bytes:
    try:
        with fs.open_input_stream(f"{path}/{SUCCESS}") as f:
            return f.read()
    except (FileNotFoundError, OSError) as exc:
        raise RemoteCacheError(f"{path}: not a complete artifact (no {SUCCESS} manifest)") from exc


def cache_key(uri: str, manifest: bytes) -> str:
    return hashlib.sha256(uri.encode() + b"\0" + manifest).hexdigest()[:24]


def _evict(root: Path, prefix: str, keep: Path) -> None:
    """Delete older copies of one URI (``prefix``), keeping ``keep`` and the newest others."""
    copies = sorted((p for p in root.glob(f"{prefix}*") if p.is_dir() and p != keep),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for old in copies[KEEP - 1:]:
        shutil.rmtree(old, ignore_errors=True)


def fetch_artifact(fs: pafs.FileSystem, path: str, uri: str | None = None,
                   cache_root: str | Path | None = None) -> Path:
    """The local directory holding the artifact at ``path`` on ``fs`` as of its current manifest.

    Cheap when the current build is already cached (one manifest read); otherwise copies it.
    """
    uri = uri or path
    manifest = read_manifest(fs, path)
    root = private_dir(cache_root if cache_root is not None else default_cache_root())
    name = Path(path.rstrip("/")).name or "artifact"
    prefix = f"{name}-{hashlib.sha256(uri.encode()).hexdigest()[:8]}-"
    dest = root / f"{prefix}{cache_key(uri, manifest)}"
    if (dest / SUCCESS).is_file():  # the key hashes the manifest: this very build
        return dest
    meta = json.loads(manifest.decode())
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
    try:
        src_root, rels = build_files(fs, path, meta)
        for rel in rels:
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with fs.open_input_stream(f"{src_root}/{rel}") as fin, open(target, "wb") as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)
            except FileNotFoundError as exc:
                raise RemoteCacheError(f"{uri}: {rel} of build {meta.get('build')} is gone (republished twice "
                                       "during the copy?); retry") from exc
        if not meta.get("root") and read_manifest(fs, path) != manifest:  # written in place: may have changed
            raise RemoteCacheError(f"{uri}: the artifact was republished while it was being copied; retry")
        meta.pop("root", None)  # the copy holds the build's files at its top, like a local artifact
        (tmp / SUCCESS).write_text(json.dumps(meta, indent=2, sort_keys=True))  # last: the copy is complete
        try:
            os.replace(tmp, dest)
        except OSError:  # another process published this build first: keep theirs
            if not (dest / SUCCESS).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _evict(root, prefix, dest)
    return dest


def fetch_uri(uri: str, cache_root: str | Path | None = None) -> Path:
    """:func:`fetch_artifact` for an artifact URI (``s3://b/run/precache``, or its ``/_SUCCESS``)."""
    fs, path = pafs.FileSystem.from_uri(uri)
    path = path.rstrip("/")
    if path.endswith("/" + SUCCESS):
        path = path[: -len(SUCCESS) - 1]
        uri = uri.rstrip("/")[: -len(SUCCESS) - 1]
    return fetch_artifact(fs, path, uri, cache_root)
