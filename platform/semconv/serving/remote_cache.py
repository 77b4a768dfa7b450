"""A local copy of a remote artifact, versioned by its manifest and published atomically.

Libraries that need paths (safetensors, Hugging Face, the memory-mapped precache) read a remote
artifact (``s3://...``) from a local copy. The copy lives in ``<cache root>/<name>-<key>`` where
``key`` hashes the artifact's URI *and its manifest bytes*: an artifact republished at the same URI
has a new manifest, so it gets a new entry and every replica that re-checks sees the new version.
Files are copied into a private temporary sibling (data first, manifest last), the remote manifest
is read again to make sure the artifact did not change during the copy, and the directory is
renamed into place, so a reader never sees ``_SUCCESS`` before the shards, and two processes
copying the same version race harmlessly (the first rename wins, the other copy is dropped).

The cache root is private to the user (mode 0700, owner checked), never a predictable name in a
world-writable directory.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pyarrow.fs as pafs

SUCCESS = "_SUCCESS"  # the manifest file name (semconv.artifacts.SUCCESS; no import cycle)


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


def fetch_artifact(fs: pafs.FileSystem, path: str, uri: str | None = None,
                   cache_root: str | Path | None = None) -> Path:
    """The local directory holding the artifact at ``path`` on ``fs`` as of its current manifest.

    Cheap when the current version is already cached (one manifest read); otherwise copies it.
    """
    uri = uri or path
    manifest = read_manifest(fs, path)
    root = private_dir(cache_root if cache_root is not None else default_cache_root())
    name = Path(path.rstrip("/")).name or "artifact"
    dest = root / f"{name}-{cache_key(uri, manifest)}"
    if (dest / SUCCESS).is_file() and (dest / SUCCESS).read_bytes() == manifest:
        return dest
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        files = sorted(i.path for i in infos if i.type == pafs.FileType.File)
        base = path.rstrip("/") + "/"
        for src in files:
            rel = src[len(base):] if src.startswith(base) else Path(src).name
            if rel == SUCCESS or Path(rel).name.startswith(".") and ".tmp-" in rel:
                continue
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with fs.open_input_stream(src) as fin, open(target, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
        if read_manifest(fs, path) != manifest:
            raise RemoteCacheError(f"{uri}: the artifact was republished while it was being copied; retry")
        (tmp / SUCCESS).write_bytes(manifest)  # last: the copy is complete
        try:
            os.replace(tmp, dest)
        except OSError:  # another process published this version first: keep theirs
            if not (dest / SUCCESS).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def fetch_uri(uri: str, cache_root: str | Path | None = None) -> Path:
    """:func:`fetch_artifact` for an artifact URI (``s3://b/run/precache``, or its ``/_SUCCESS``)."""
    fs, path = pafs.FileSystem.from_uri(uri)
    path = path.rstrip("/")
    if path.endswith("/" + SUCCESS):
        path = path[: -len(SUCCESS) - 1]
        uri = uri.rstrip("/")[: -len(SUCCESS) - 1]
    return fetch_artifact(fs, path, uri, cache_root)
