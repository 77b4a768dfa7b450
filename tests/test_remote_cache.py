"""Remote artifacts (an in-memory pyarrow filesystem): versioned, atomic, private local copies."""

from __future__ import annotations

import json
import os
import stat

import pyarrow.fs as pafs
import pytest

from semconv.remote_cache import RemoteCacheError, fetch_artifact, private_dir


@pytest.fixture()
def memfs():
    fsspec = pytest.importorskip("fsspec")
    from fsspec.implementations.memory import MemoryFileSystem

    mem = MemoryFileSystem()
    mem.store.clear()
    mem.pseudo_dirs.clear()
    mem.pseudo_dirs.append("")
    assert fsspec  # the in-memory store is process-global: start empty
    return pafs.PyFileSystem(pafs.FSSpecHandler(mem))


def publish(fs, path: str, files: dict[str, bytes], version: str) -> None:
    fs.create_dir(path, recursive=True)
    for name, data in files.items():
        with fs.open_output_stream(f"{path}/{name}") as f:
            f.write(data)
    with fs.open_output_stream(f"{path}/_SUCCESS") as f:
        f.write(json.dumps({"version": version}).encode())


def test_a_republished_artifact_gets_a_new_local_version(memfs, tmp_path):
    publish(memfs, "/bucket/run/precache", {"shard-00000.parquet": b"one"}, "v1")
    first = fetch_artifact(memfs, "/bucket/run/precache", "mem://bucket/run/precache", tmp_path / "c")
    assert (first / "shard-00000.parquet").read_bytes() == b"one"
    assert fetch_artifact(memfs, "/bucket/run/precache", "mem://bucket/run/precache", tmp_path / "c") == first
    publish(memfs, "/bucket/run/precache", {"shard-00000.parquet": b"two"}, "v2")  # same URI
    second = fetch_artifact(memfs, "/bucket/run/precache", "mem://bucket/run/precache", tmp_path / "c")
    assert second != first and (second / "shard-00000.parquet").read_bytes() == b"two"
    assert json.loads((second / "_SUCCESS").read_text())["version"] == "v2"
    assert (first / "shard-00000.parquet").read_bytes() == b"one"  # a reader of v1 is not disturbed


def test_a_copy_that_fails_leaves_nothing_under_a_final_name(memfs, tmp_path, monkeypatch):
    publish(memfs, "/b/precache", {"a.parquet": b"x", "b.parquet": b"y"}, "v1")
    import shutil

    real = shutil.copyfileobj
    calls = []

    def flaky(src, dst, n=0):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("connection reset")
        return real(src, dst, n)

    monkeypatch.setattr(shutil, "copyfileobj", flaky)
    with pytest.raises(OSError, match="connection reset"):
        fetch_artifact(memfs, "/b/precache", "mem://b/precache", tmp_path / "c")
    assert list((tmp_path / "c").iterdir()) == []  # no half copy, no _SUCCESS before the shards
    monkeypatch.setattr(shutil, "copyfileobj", real)
    done = fetch_artifact(memfs, "/b/precache", "mem://b/precache", tmp_path / "c")
    assert sorted(p.name for p in done.iterdir()) == ["_SUCCESS", "a.parquet", "b.parquet"]


def test_republished_during_the_copy_is_refused(memfs, tmp_path, monkeypatch):
    publish(memfs, "/b/precache", {"a.parquet": b"x"}, "v1")
    import shutil

    real = shutil.copyfileobj

    def republish_midway(src, dst, n=0):
        real(src, dst, n)
        publish(memfs, "/b/precache", {"a.parquet": b"z"}, "v2")

    monkeypatch.setattr(shutil, "copyfileobj", republish_midway)
    with pytest.raises(RemoteCacheError, match="republished"):
        fetch_artifact(memfs, "/b/precache", "mem://b/precache", tmp_path / "c")
    assert list((tmp_path / "c").iterdir()) == []


def test_missing_manifest_and_shared_cache_dirs_are_refused(memfs, tmp_path):
    with pytest.raises(RemoteCacheError, match="no _SUCCESS"):
        fetch_artifact(memfs, "/nothing/here", "mem://nothing/here", tmp_path / "c")
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(RemoteCacheError, match="not private"):
        private_dir(shared)
    assert stat.S_IMODE(private_dir(tmp_path / "mine").stat().st_mode) == 0o700


def remote_run_dir(fs, root: str, uri: str):
    """A ``RunDir`` over ``fs`` (what ``RunDir("s3://...")`` builds, with the in-memory store)."""
    from semconv.artifacts import RunDir

    rd = RunDir.__new__(RunDir)
    rd.uri, rd.fs, rd.root, rd.is_local = uri, fs, root, False
    return rd


def test_run_dir_local_refetches_a_republished_remote_artifact(memfs, tmp_path, monkeypatch):
    monkeypatch.setenv("SEMCONV_CACHE_DIR", str(tmp_path / "c"))
    rd = remote_run_dir(memfs, "/bucket/run", "s3://bucket/run")
    publish(memfs, "/bucket/run/codebook", {"model.safetensors": b"old"}, "v1")
    assert (rd.local("codebook") / "model.safetensors").read_bytes() == b"old"
    publish(memfs, "/bucket/run/codebook", {"model.safetensors": b"new"}, "v2")
    local = rd.local("codebook")
    assert (local / "model.safetensors").read_bytes() == b"new"  # not the stale first copy
    assert str(local).startswith(str(tmp_path / "c"))  # the private cache, not a fixed /tmp name
