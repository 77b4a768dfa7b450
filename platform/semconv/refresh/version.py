"""Serving versions: ``<run_dir>/versions/<name>/``, each a complete run-directory view.

A version holds the artifacts served together (``items/``, ``item_codes/``, ``precache/``) and
those a later refresh or the Serve app's fallback read (``item_emb/``, ``item_text_emb/`` when
known, ``sequences/``, ``splits/``, ``codebook/``, ``model/`` for online generation), each with its own ``_SUCCESS``. The version is
one :meth:`RunDir.writing` artifact: built in a temporary directory and renamed into place with
its manifest last, so a version is either whole or absent and no reader ever pairs a new
precache with an old catalogue. ``serve run serve_app.app:app_builder run_dir=<version dir>``
serves it; the manifest names every artifact's creation time, the delta and the re-decoded users.

The base of a refresh is the newest complete version (by name), else the run directory itself;
the model and codebook always come from the run directory (a refresh never retrains).
"""

from __future__ import annotations

import hashlib
import re

import pyarrow.fs as pafs

from semconv.artifacts import RunDir, filesystem, join_uri

VERSIONS = "versions"
NAME = re.compile(r"^v(\d{4,})$")


def version_names(run: RunDir) -> list[str]:
    """Complete versions, oldest first."""
    sel = pafs.FileSelector(run.path(VERSIONS), allow_not_found=True)
    names = [f.base_name for f in run.fs.get_file_info(sel) if f.type == pafs.FileType.Directory]
    done = [n for n in names if ".tmp-" not in n and not n.endswith(".partial")
            and run.is_complete(f"{VERSIONS}/{n}")]
    return sorted(done, key=lambda n: (0, int(NAME.match(n).group(1))) if NAME.match(n) else (1, n))


def base_of(run: RunDir) -> tuple[RunDir, str | None]:
    """The RunDir whose artifacts a refresh extends, and its version name (None: the run itself)."""
    names = version_names(run)
    if not names:
        return run, None
    name = f"{VERSIONS}/{names[-1]}"
    return RunDir(run.path(name) if run.is_local else join_uri(run.uri, name)), names[-1]


def next_name(run: RunDir) -> str:
    nums = [int(m.group(1)) for n in version_names(run) if (m := NAME.match(n))]
    return f"v{(max(nums) + 1 if nums else 1):04d}"


BASE_KEYS = ("base", "base_precache")


def find_applied(run: RunDir, fingerprint: dict) -> str | None:
    """A complete version built from exactly this delta and settings, whatever its base: a rerun
    of a finished refresh finds its own version (which is now the newest base) and stops."""
    want = {k: v for k, v in fingerprint.items() if k not in BASE_KEYS}
    for name in version_names(run):
        have = run.manifest(f"{VERSIONS}/{name}").get("fingerprint") or {}
        if {k: v for k, v in have.items() if k not in BASE_KEYS} == want:
            return name
    return None


def file_digest(uri: str | None) -> str | None:
    """sha256 of a file's bytes (every file, in path order, for a directory); None for None."""
    if not uri:
        return None
    fs, path, _ = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        files = sorted(f.path for f in fs.get_file_info(pafs.FileSelector(path, recursive=True))
                       if f.type == pafs.FileType.File)
    else:
        files = [path]
    h = hashlib.sha256()
    for f in files:
        try:
            with fs.open_input_stream(f) as s:
                while chunk := s.read(1 << 20):
                    h.update(chunk)
        except FileNotFoundError:
            from semconv.data.readers import DataError

            raise DataError(f"{uri}: file not found") from None
    return h.hexdigest()
