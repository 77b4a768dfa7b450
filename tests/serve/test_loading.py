"""The versions a replica holds: the first load before traffic, switches on the side, answers
by version id, the deadline on a target that does not load."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from semconv.serving.version import Target, version_id
from serve_app.config import AppArgs, ServeUserConfig
from serve_app.loading import Versions, run_by_version
from serve_app.service import Unavailable

V1, V2, V3 = Target("v1"), Target("v2"), Target("v3")


class Builds:
    """The artifacts' builds each target has now (``identify``); ``republish`` changes one."""

    def __init__(self):
        self.of: dict[str, str] = {}

    def __call__(self, target: Target) -> dict:
        return {"run": self.of.setdefault(target.run_dir, "b0")}

    def republish(self, run_dir: str, build: str) -> None:
        self.of[run_dir] = build

    def vid(self, target: Target) -> str:
        return version_id(target, self(target))


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def versions(load, deadline_s=30.0, **kw) -> tuple[Versions, Builds]:
    builds = Builds()
    return Versions(load, deadline_s, "thing", identify=builds, **kw), builds


def part_of(target: Target, builds: dict, reuse) -> str:
    return f"part of {target.run_dir}"


async def until(condition, timeout_s: float = 10.0) -> None:
    """Wait for ``condition()`` (a state reached by another task or thread), failing after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def test_the_first_load_is_awaited_and_a_failed_one_fails_the_start():
    ok, builds = versions(part_of)
    assert asyncio.run(ok.switch(V1)) is True and ok.current == "part of v1" and ok.reloads == 1
    assert ok.current_id == builds.vid(V1)

    def boom(target, builds, reuse):
        raise FileNotFoundError("no _SUCCESS")

    bad, _ = versions(boom)
    with pytest.raises(RuntimeError, match="first load failed: FileNotFoundError: no _SUCCESS"):
        asyncio.run(bad.switch(V1))
    with pytest.raises(RuntimeError, match="nothing loaded"):
        bad.check()


def test_a_hung_first_load_fails_at_the_deadline():
    release = threading.Event()
    hung, _ = versions(lambda target, builds, reuse: release.wait(30), deadline_s=0.3)

    async def go():
        try:
            await hung.switch(V1)
        finally:
            release.set()  # lets asyncio.run's executor shutdown finish

    with pytest.raises(TimeoutError, match="first load did not finish within"):
        asyncio.run(go())
    assert hung.current is None


def test_each_version_is_answered_by_its_own_part_and_the_one_before_stays():
    v, builds = versions(part_of)

    async def go():
        await v.switch(V1)
        await v.switch(V2)
        assert await v.get(builds.vid(V2), 0) == "part of v2" and await v.get(builds.vid(V1), 0) == "part of v1"
        await v.switch(V3)  # at most two held: v1 goes
        assert v.holds(builds.vid(V2)) and v.holds(builds.vid(V3)) and not v.holds(builds.vid(V1))
        with pytest.raises(Unavailable, match=f"version {builds.vid(V1)} is not loaded on this thing replica yet"):
            await v.get(builds.vid(V1), 0)
        await v.switch(V2)  # back to the one before: no load
        return v.current, v.reloads

    assert asyncio.run(go()) == ("part of v2", 4)


def test_a_request_for_the_version_being_loaded_waits_for_it_and_times_out_as_503():
    gate = threading.Event()

    def load(target, builds, reuse):
        if target == V2:
            gate.wait(30)
        return part_of(target, builds, reuse)

    v, builds = versions(load)

    async def go():
        await v.switch(V1)
        switching = asyncio.create_task(v.switch(V2))
        await until(lambda: v.status()["reloading"])
        with pytest.raises(Unavailable, match="not loaded"):
            await v.get(builds.vid(V2), 0.05)  # still loading after 50 ms
        waiting = asyncio.create_task(v.get(builds.vid(V2), 10))
        assert await v.get(builds.vid(V1), 0) == "part of v1" and v.current == "part of v1"
        gate.set()
        assert await waiting == "part of v2" and await switching is True
        return v.current

    assert asyncio.run(go()) == "part of v2"


def test_a_failed_switch_keeps_the_current_version_and_fails_the_health_check_at_the_deadline():
    clock = Clock()

    def load(target, builds, reuse):
        if target == V2:
            raise ValueError("broken precache")
        return part_of(target, builds, reuse)

    v, builds = versions(load, deadline_s=60, clock=clock)

    async def go():
        await v.switch(V1)
        clock.now = 100.0
        assert await v.switch(V2) is False
        assert v.current == "part of v1" and v.status() == {
            "version_id": builds.vid(V1), "reloading": False, "reloads": 1, "reload_failures": 1,
            "last_error": "ValueError: broken precache"}
        clock.now = 159.0
        v.check()  # within the deadline: healthy, serving v1
        clock.now = 161.0
        with pytest.raises(RuntimeError, match="not loaded in 61 s, past the 60 s deadline.*broken precache"):
            v.check()
        assert await v.switch(V1) is True  # back to what it serves: healthy again
        v.check()

    asyncio.run(go())


def test_a_hung_switch_returns_at_the_deadline_fails_the_health_check_and_flips_when_it_finishes():
    clock, release = Clock(), threading.Event()

    def load(target, builds, reuse):
        if target == V2:
            release.wait(30)
        return part_of(target, builds, reuse)

    v, _ = versions(load, deadline_s=0.2, clock=clock)

    async def go():
        await v.switch(V1)
        assert await v.switch(V2) is False  # reconfigure returns: Serve's rollout is not held up
        assert v.current == "part of v1" and v.status()["reloading"]
        clock.now = 1.0
        with pytest.raises(RuntimeError, match="past the 0 s deadline"):
            v.check()
        release.set()
        await until(lambda: v.current == "part of v2")
        v.check()

    asyncio.run(go())


def test_a_newer_switch_wins_over_an_older_one_still_loading():
    gate = threading.Event()

    def load(target, builds, reuse):
        if target == V2:
            gate.wait(10)
        return part_of(target, builds, reuse)

    v, _ = versions(load)

    async def go():
        await v.switch(V1)
        slow = asyncio.create_task(v.switch(V2))
        await until(lambda: v.status()["reloading"])
        assert await v.switch(V3) is True
        gate.set()
        assert await slow is False  # finishing later, the older switch does not flip
        return v.current

    assert asyncio.run(go()) == "part of v3"


def test_a_version_is_its_builds_and_one_republished_while_loading_is_refused():
    v, builds = versions(part_of)
    loads = []

    def load(target, b, reuse):
        loads.append(b["run"])
        if b["run"] == "b1":
            builds.republish("v1", "b2")  # a publish lands during the load
        return part_of(target, b, reuse)

    v.load_fn = load

    async def go():
        await v.switch(V1)
        first = v.current_id
        assert await v.switch(V1) is True and loads == ["b0"]  # the same builds: nothing to load
        builds.republish("v1", "b1")
        assert await v.switch(V1) is False and "republished while the version loaded" in v.last_error
        assert v.current_id == first
        assert await v.switch(V1) is True and loads == ["b0", "b1", "b2"]  # the same target, new builds
        assert v.current_id == builds.vid(V1) != first

    asyncio.run(go())


def test_a_switch_flips_only_after_before_flip_and_holds_the_new_version_meanwhile():
    async def go():
        others_hold = asyncio.Event()
        seen = []

        async def before_flip(vid):
            seen.append((vid, v.current_id))
            await others_hold.wait()

        v.before_flip = before_flip
        await v.switch(V1)  # a first load flips at once: nothing to keep serving
        switching = asyncio.create_task(v.switch(V2))
        await until(lambda: v.holds(builds.vid(V2)) and seen)
        assert v.current == "part of v1"  # loaded, held, not yet current
        others_hold.set()
        assert await switching is True and v.current == "part of v2"
        return seen

    v, builds = versions(part_of)
    assert asyncio.run(go()) == [(builds.vid(V2), builds.vid(V1))]


def test_a_batch_is_answered_by_the_version_each_request_was_resolved_to():
    old, new = object(), object()
    requests = [(old, 1), (new, 2), (old, 3), (new, 4), (old, 5)]
    runs = []

    async def run(version, reqs):
        runs.append((version, [x for _, x in reqs]))
        return [("old" if version is old else "new", x) for _, x in reqs]

    out = asyncio.run(run_by_version(requests, lambda r: r[0], run))
    assert out == [("old", 1), ("new", 2), ("old", 3), ("new", 4), ("old", 5)]  # request order
    assert runs == [(old, [1, 3, 5]), (new, [2, 4])]  # one run per version


def test_user_config_names_a_whole_version():
    args = AppArgs(run_dir="/r1", precache="/r1/pc_old")
    assert ServeUserConfig().target(args) == Target("/r1", "/r1/pc_old", True)
    assert ServeUserConfig(precache="s3://b/pc").target(args) == Target("/r1", "s3://b/pc", True)
    # a new run dir brings its own precache unless one is named
    assert ServeUserConfig(run_dir="s3://b/r2").target(args) == Target("s3://b/r2", None, True)
    assert ServeUserConfig(run_dir="/r2", precache="/r2/p", fallback=False).target(args) == Target("/r2", "/r2/p", False)


def test_serving_beyond_loopback_without_a_token_refuses_to_start(monkeypatch, caplog):
    monkeypatch.delenv("SEMCONV_API_TOKEN", raising=False)
    assert AppArgs(run_dir="r").api_token("127.0.0.1") is None  # loopback: open is fine
    assert AppArgs(run_dir="r").api_token("::1") is None and AppArgs(run_dir="r").api_token("localhost") is None
    for host in ("0.0.0.0", "10.0.0.5", "::", None):  # None: Serve could not say, so closed
        with pytest.raises(RuntimeError, match=r"SEMCONV_API_TOKEN.*require_auth: false"):
            AppArgs(run_dir="r").api_token(host)
    with pytest.raises(RuntimeError, match="require_auth is true"):
        AppArgs(run_dir="r", require_auth=True).api_token("127.0.0.1")
    with caplog.at_level("WARNING", logger="ray.serve"):
        assert AppArgs(run_dir="r", require_auth=False).api_token("0.0.0.0") is None
    assert "WITHOUT AUTHENTICATION on 0.0.0.0" in caplog.text
    monkeypatch.setenv("MY_SECRET", "t0k")
    assert AppArgs(run_dir="r", api_token_env="MY_SECRET").api_token("0.0.0.0") == "t0k"
    assert AppArgs(run_dir="r", api_token_env="MY_SECRET", require_auth=True).api_token(None) == "t0k"


def test_the_shipped_serve_config_refuses_to_start_without_a_token(monkeypatch):
    import yaml

    from serve_app.config import is_loopback

    monkeypatch.delenv("SEMCONV_API_TOKEN", raising=False)
    cfg = yaml.safe_load((Path(__file__).resolve().parents[2] / "cluster" / "serve.yaml").read_text())
    host = cfg["http_options"]["host"]
    (app,) = cfg["applications"]
    args = AppArgs.model_validate(app["args"])
    assert not is_loopback(host) and args.docs is False
    with pytest.raises(RuntimeError, match="refusing to serve"):
        args.api_token(host)


