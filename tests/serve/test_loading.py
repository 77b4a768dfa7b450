"""Versions a replica serves: first load before traffic, reloads on the side, the deadline."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from serve_app.config import AppArgs, ServeUserConfig
from serve_app.loading import Versioned, run_by_version


def test_the_first_load_is_awaited_and_a_failed_one_fails_the_start():
    ok = Versioned(lambda target, old: f"state of {target}", 5, "thing")
    assert asyncio.run(ok.first("v1")) == "state of v1" and ok.reloads == 1

    def boom(target, old):
        raise FileNotFoundError("no _SUCCESS")

    bad = Versioned(boom, 5, "thing")
    with pytest.raises(RuntimeError, match="first load failed: FileNotFoundError: no _SUCCESS"):
        asyncio.run(bad.first("v1"))
    with pytest.raises(RuntimeError, match="nothing loaded"):
        bad.check()


def test_a_hung_first_load_fails_at_the_deadline():
    release = threading.Event()
    threading.Timer(1.0, release.set).start()  # lets asyncio.run's executor shutdown finish
    hung = Versioned(lambda target, old: release.wait(30), 0.3, "thing")
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="did not finish within"):
        asyncio.run(hung.first("v1"))
    assert hung.current is None and time.monotonic() - t0 < 10


def test_a_hung_reload_fails_the_health_check_while_the_old_version_serves():
    release = threading.Event()

    def load(target, old):
        if target == "v2":
            release.wait(30)
        return target

    v = Versioned(load, 0.2, "thing")

    async def go():
        await v.first("v1")
        v.check()  # healthy
        task = asyncio.create_task(v.load("v2"))
        await asyncio.sleep(0.4)
        assert v.current == "v1" and v.status()["reloading"]
        with pytest.raises(RuntimeError, match="past the .* deadline"):
            v.check()
        release.set()
        assert await task is True
        v.check()
        return v.current

    assert asyncio.run(go()) == "v2"


def test_a_failed_reload_keeps_the_old_version_and_a_newer_reload_wins():
    gate = {"v2": threading.Event()}

    def load(target, old):
        if target == "bad":
            raise ValueError("broken precache")
        if target in gate:
            gate[target].wait(10)
        return target

    v = Versioned(load, 30, "thing")

    async def go():
        await v.first("v1")
        assert await v.load("bad") is False
        assert v.current == "v1" and v.status() == {"reloading": False, "reloads": 1, "reload_failures": 1,
                                                    "last_error": "ValueError: broken precache"}
        slow = asyncio.create_task(v.load("v2"))
        await asyncio.sleep(0.05)
        assert await v.load("v3") is True  # the newer request publishes ...
        gate["v2"].set()
        assert await slow is False  # ... and the older one, finishing later, does not
        return v.current, v.last_error

    assert asyncio.run(go()) == ("v3", None)


def test_switch_loads_only_a_new_target_or_retries_a_failed_one():
    calls = []
    broken = {"bad"}

    def load(target, old):
        calls.append(target)
        if target in broken:
            raise ValueError("not yet published")
        return target

    v = Versioned(load, 30, "thing")

    async def go():
        await v.first("v1")
        assert await v.switch("v1") is False  # the same version: no reload
        assert await v.switch("bad") is False and v.current == "v1"
        broken.clear()
        assert await v.switch("bad") is True  # the failed target is tried again, and now loads
        assert await v.switch("bad") is False

    asyncio.run(go())
    assert calls == ["v1", "bad", "bad"]


def test_a_batch_is_answered_by_the_version_each_request_was_checked_against():
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
    assert ServeUserConfig().target(args) == ("/r1", "/r1/pc_old", True)
    assert ServeUserConfig(precache="s3://b/pc").target(args) == ("/r1", "s3://b/pc", True)
    # a new run dir brings its own precache unless one is named
    assert ServeUserConfig(run_dir="s3://b/r2").target(args) == ("s3://b/r2", None, True)
    assert ServeUserConfig(run_dir="/r2", precache="/r2/p", fallback=False).target(args) == ("/r2", "/r2/p", False)


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


