"""RunDir: a manifest lists every file of its build and commits it; on an object store (a real S3
server) a publish is one pointer written last, so a crash leaves the previous build whole."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from semconv.artifacts import BUILDS, SUCCESS, RunDir, join_uri


def table(n: int, tag: str) -> pa.Table:
    return pa.table({"item_id": list(range(n)), "title": [f"{tag} {i}" for i in range(n)]})


@pytest.fixture(params=["local", "s3"])
def run(request, tmp_path) -> RunDir:
    if request.param == "local":
        return RunDir(tmp_path / "run")
    return RunDir(request.getfixturevalue("s3_server")(f"{tmp_path.name}/run"))


def stored(run: RunDir, path: str) -> list[str]:
    """Every object under ``path`` (relative), as the store lists them."""
    infos = run.fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sorted(i.path[len(path) + 1:] for i in infos if i.type == pafs.FileType.File)


def test_join_uri_keeps_the_query():
    assert join_uri("s3://b/run?endpoint_override=http://h:1&scheme=http", "versions/v0001") == (
        "s3://b/run/versions/v0001?endpoint_override=http://h:1&scheme=http")
    assert join_uri("/tmp/run/", "items") == "/tmp/run/items"


def test_a_manifest_lists_every_file_with_its_size_and_rows(run):
    run.write_table("items", table(10, "a"), num_shards=3)
    meta = run.manifest("items")
    assert sorted(meta["files"]) == [f"part-0000{i}.parquet" for i in range(3)]
    assert sum(f["rows"] for f in meta["files"].values()) == 10
    for rel, f in meta["files"].items():
        assert run.fs.get_file_info(run.file("items", rel)).size == f["bytes"]
    assert run.read_table("items").equals(table(10, "a"))


def test_readers_read_only_the_files_the_manifest_lists(run):
    run.write_table("items", table(4, "a"))
    stray = run.file("items", "part-99999.parquet")  # e.g. a copy that a crashed tool left behind
    with run.fs.open_output_stream(stray) as f:
        pq.write_table(table(3, "stray"), f)
    assert run.read_table("items").equals(table(4, "a"))
    assert run.parquet_files("items") == [run.file("items", "part-00000.parquet")]


def test_a_nested_artifact_keeps_its_manifest_and_reads_through_the_outer_one(run):
    with run.writing("versions/v0001", {"version": "v0001"}) as tmp:
        RunDir(tmp).write_table("items", table(5, "v1"))
    outer = run.manifest("versions/v0001")
    assert {"items/_SUCCESS", "items/part-00000.parquet"} <= set(outer["files"])
    version = RunDir(run.path("versions/v0001") if run.is_local else join_uri(run.uri, "versions/v0001"))
    assert version.is_complete("items") and version.read_table("items").equals(table(5, "v1"))
    assert pq.read_table(version.local("items") / "part-00000.parquet").equals(table(5, "v1"))


def test_a_republish_on_s3_flips_one_pointer_and_keeps_the_build_it_replaced(s3_server, tmp_path):
    run = RunDir(s3_server(f"{tmp_path.name}/run"))
    builds = []
    for tag in ("v1", "v2", "v3"):
        run.write_table("items", table(3, tag))
        builds.append(run.manifest("items")["build"])
        assert run.read_table("items").equals(table(3, tag))
    kept = {p.split("/")[1] for p in stored(run, run.path("items")) if p.startswith(BUILDS)}
    assert kept == set(builds[1:])  # the newest and the one before it; older builds are collected
    assert json.loads(run.fs.open_input_stream(f"{run.path('items')}/{SUCCESS}").read())["root"] == (
        f"{BUILDS}/{builds[2]}")


@pytest.mark.parametrize("fail_at", range(4))  # 3 data files, then the manifest
def test_a_publish_killed_between_any_two_copies_leaves_the_previous_build_whole(s3_server, tmp_path,
                                                                                   monkeypatch, fail_at):
    run = RunDir(s3_server(f"{tmp_path.name}/run"))
    run.write_table("items", table(9, "old"), num_shards=3)
    old = run.manifest("items")
    calls = {"n": 0}
    copy = pafs.copy_files

    def dying_copy(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > fail_at:
            raise OSError("killed mid-publish")
        return copy(*args, **kwargs)

    def dying_commit(self, final, meta):
        raise OSError("killed mid-publish")

    monkeypatch.setattr(pafs, "copy_files", dying_copy)
    monkeypatch.setattr(RunDir, "_commit", dying_commit)  # reached only when fail_at == 3
    with pytest.raises(OSError, match="killed mid-publish"):
        run.write_table("items", table(9, "new"), num_shards=3)
    assert calls["n"] == min(fail_at + 1, 3)
    monkeypatch.undo()

    assert run.manifest("items") == old and run.read_table("items").equals(table(9, "old"))
    local = run.local("items")  # a replica starting now copies the previous build, nothing missing
    assert sorted(p.name for p in local.iterdir()) == [SUCCESS] + sorted(old["files"])
    assert pa.concat_tables(pq.read_table(local / r) for r in sorted(old["files"])).equals(table(9, "old"))
    run.write_table("items", table(2, "next"))  # the next publish collects the dead upload
    builds = {p.split("/")[1] for p in stored(run, run.path("items")) if p.startswith(BUILDS)}
    assert builds == {old["build"], run.manifest("items")["build"]}


def test_a_copied_manifest_names_its_own_build(tmp_path):
    """A stage that carries an artifact over passes the old manifest: the new one gets a fresh
    build and the files it really holds."""
    run = RunDir(tmp_path)
    run.write_table("items", table(3, "a"))
    old = run.manifest("items")
    with run.writing("copy", dict(old)) as tmp:
        (Path(tmp) / "x.bin").write_bytes(b"12345")
    new = run.manifest("copy")
    assert new["build"] != old["build"] and new["files"] == {"x.bin": {"bytes": 5}} and "root" not in new
