"""A serving version and its id: which build of every artifact the version is made of.

Every deployment of the Serve app derives the id from the same ``user_config`` target, so the
ingress can name the version it resolved a request against and the tokenizer and model
deployments can answer from exactly that version (or say they do not hold it). The id hashes the
target and each artifact's manifest ``build`` (unique per publish), never a timestamp or an
mtime: an artifact republished in place makes a new version, however soon after the last.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow.fs as pafs

from semconv.artifacts import SUCCESS, ArtifactError, RunDir

ARTIFACTS = ("items", "item_codes", "sequences", "splits", "codebook", "model", "precache")


@dataclass(frozen=True)
class Target:
    """What ``user_config`` names: a run directory, optionally another precache, the fallback."""

    run_dir: str
    precache: str | None = None  # a dir, URI or its _SUCCESS; None: <run_dir>/precache
    fallback: bool = True


def build_of(manifest: dict) -> str:
    """An artifact's build id (a manifest written before builds existed: a hash of its content)."""
    return manifest.get("build") or hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:12]


def precache_manifest(precache: str) -> dict:
    """The manifest of a precache named by a local path, a URI, or either's ``_SUCCESS``."""
    text = str(precache)
    if "://" in text and not text.startswith("file://"):
        fs, path = pafs.FileSystem.from_uri(text)
    else:
        fs, path = pafs.LocalFileSystem(), str(Path(text.removeprefix("file://")).expanduser())
    path = path.rstrip("/")
    if not path.endswith(f"/{SUCCESS}"):
        path = f"{path}/{SUCCESS}"
    try:
        with fs.open_input_stream(path) as f:
            return json.loads(f.read())
    except (FileNotFoundError, OSError) as exc:
        raise ArtifactError(f"{precache}: not a complete precache (no {SUCCESS} manifest)") from exc


def version_builds(target: Target) -> dict[str, str]:
    """``{artifact: build}`` of every artifact the version serves (the ones present)."""
    run = RunDir(target.run_dir)
    builds = {name: build_of(run.manifest(name)) for name in ARTIFACTS if run.is_complete(name)}
    if target.precache is not None:
        builds["precache"] = build_of(precache_manifest(target.precache))
    return builds


def version_id(target: Target, builds: dict[str, str]) -> str:
    """12 hex chars naming the target as built by ``builds`` (:func:`version_builds`)."""
    blob = json.dumps({"target": asdict(target), "builds": builds}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
