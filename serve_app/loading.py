"""The versions a replica holds: loaded on the side, named by version id, a deadline on the target.

Every deployment of the app holds its part of a version (the ingress a serving state, the
tokenizer a codebook, the model deployment a model) under the version's id
(:func:`semconv.serving.version.version_id`, the same on every deployment for one target). The
ingress resolves each request against one version and passes its id on; the other deployments
answer from the part they hold under that id (:meth:`Versions.get`) or say it is not loaded.

A switch (``reconfigure``) loads the new target in a thread while the current version keeps
answering, then makes it current; the version before stays held beside it, so requests the
ingress resolved to it before its own switch still get answered. Serve calls ``reconfigure``
right after the constructor of a new replica too, so a replica starts directly on the target
its ``user_config`` names. A first load that fails or overruns ``load_deadline_s`` fails the
replica's start; afterwards, a replica whose target has gone unserved (a failed or hung load)
for ``load_deadline_s`` fails :meth:`Versions.check` (its ``check_health``), so Serve replaces it
instead of letting it serve the old version beside peers on the new one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from semconv.serving.version import Target, version_builds, version_id
from serve_app.service import Unavailable, redact

T = TypeVar("T")
Load = Callable[[Target, dict, Any], Any]  # (target, its builds, a held part to reuse or None) -> part
log = logging.getLogger("ray.serve")


class Versions(Generic[T]):
    """One replica's parts of at most two versions (current and previous) and its target."""

    def __init__(self, load: Load, deadline_s: float, what: str,
                 on_change: Callable[["Versions[T]"], None] | None = None,
                 before_flip: Callable[[str], Awaitable[None]] | None = None,
                 identify: Callable[[Target], dict] = version_builds, clock: Callable[[], float] = time.monotonic):
        self.load_fn, self.deadline_s, self.what = load, deadline_s, what
        self.identify, self.clock = identify, clock  # the target's builds; the deadline's clock
        self.on_change = on_change or (lambda _: None)
        self.before_flip = before_flip  # awaited before a switch (not a first load) flips
        self.held: dict[str, T] = {}  # version id -> part
        self.current_id: str | None = None
        self.target: Target | None = None
        self.last_error: str | None = None
        self.reloads = 0  # versions made current (the first load counts)
        self.failures = 0
        self._generation = 0  # of the latest switch: an older one never flips
        self._unserved_since: float | None = None  # the target set and its part not loaded since
        self._loading: dict[str, asyncio.Future] = {}

    @property
    def current(self) -> T | None:
        return self.held.get(self.current_id) if self.current_id is not None else None

    async def switch(self, target: Target) -> bool:
        """Make ``target`` current; True once it is. A first switch that fails or overruns the
        deadline raises (the replica fails to start); a later one that fails keeps the current
        version and reports it, one still running at the deadline goes on in the background
        (both fail :meth:`check` once the deadline has passed)."""
        first = not self.held
        self._generation += 1
        self.target = target
        if self._unserved_since is None:
            self._unserved_since = self.clock()
        task = asyncio.ensure_future(self._switch(target, self._generation))
        try:
            done = await asyncio.wait_for(asyncio.shield(task), self.deadline_s)
        except TimeoutError:
            if first:
                task.cancel()
                raise TimeoutError(f"{self.what}: first load did not finish within {self.deadline_s:.0f} s") from None
            return False
        if first and not done:
            raise RuntimeError(f"{self.what}: first load failed: {self.last_error}")
        return done

    async def _switch(self, target: Target, generation: int) -> bool:
        try:
            builds = await asyncio.to_thread(self.identify, target)
            vid = version_id(target, builds)
            if vid == self.current_id:
                self._served(generation, vid)
                return True
            if vid not in self.held:
                if vid not in self._loading:
                    self.held = {v: p for v, p in self.held.items() if v == self.current_id}  # at most two
                    self._loading[vid] = asyncio.ensure_future(self._load(target, builds, vid))
                await asyncio.shield(self._loading[vid])
            if generation != self._generation:
                return False  # superseded: the newer switch flips
            self._unserved_since = None  # this replica's part is loaded
            if self.current_id is not None and self.before_flip is not None:
                await self.before_flip(vid)
        except Exception as exc:
            if generation == self._generation:
                self.last_error = redact(f"{type(exc).__name__}: {exc}")
                self.failures += 1
                log.exception("semconv: loading %s %s failed; still serving %s", self.what, target, self.current_id)
                self.on_change(self)
            return False
        return self._served(generation, vid)

    async def _load(self, target: Target, builds: dict, vid: str) -> None:
        try:
            part = await asyncio.to_thread(self.load_fn, target, builds, self.current)
            if await asyncio.to_thread(self.identify, target) != builds:
                raise RuntimeError("an artifact was republished while the version loaded; deploy it again")
            self.held[vid] = part
        finally:
            del self._loading[vid]

    def _served(self, generation: int, vid: str) -> bool:
        """Flip to ``vid`` (held) unless a newer switch started; keep the version before it."""
        if generation != self._generation:
            return False
        changed = vid != self.current_id or self.last_error is not None
        self._unserved_since, self.last_error = None, None
        if vid != self.current_id:
            self.held = {v: p for v, p in self.held.items() if v in (vid, self.current_id)}
            self.current_id = vid
            self.reloads += 1
        if changed:
            self.on_change(self)
        return True

    def holds(self, vid: str) -> bool:
        return vid in self.held

    async def get(self, vid: str, wait_s: float) -> T:
        """The part of version ``vid``: held, or loading here and done within ``wait_s``; else
        :class:`Unavailable` (503) saying so. The ingress resolved the request against ``vid``, so
        no other version may answer it."""
        if vid not in self.held and vid in self._loading:
            try:
                await asyncio.wait_for(asyncio.shield(self._loading[vid]), wait_s)
            except Exception:
                pass  # a failed or slow load: answered below
        if vid in self.held:
            return self.held[vid]
        raise Unavailable(f"version {vid} is not loaded on this {self.what} replica yet (it serves "
                          f"{self.current_id}); retry")

    def check(self) -> None:
        """Raise when nothing is loaded, or the target's part has gone unloaded past the deadline."""
        if not self.held:
            raise RuntimeError(f"{self.what}: nothing loaded (last error: {self.last_error})")
        if self._unserved_since is not None and self.clock() - self._unserved_since > self.deadline_s:
            raise RuntimeError(f"{self.what}: the target version has not loaded in "
                               f"{self.clock() - self._unserved_since:.0f} s, past the {self.deadline_s:.0f} s "
                               f"deadline (last error: {self.last_error})")

    def status(self) -> dict:
        return {"version_id": self.current_id, "reloading": bool(self._loading), "reloads": self.reloads,
                "reload_failures": self.failures, "last_error": self.last_error}


class VersionMetrics:
    """Prometheus metrics of a replica's version (``ray_semconv_*``; Serve adds the deployment,
    replica and application tags), created inside the replica: the version id served (a 1-valued
    gauge tagged with it: every deployment of one version shows the same id), reload outcomes,
    whether the last (re)load failed."""

    def __init__(self):
        from ray.serve.metrics import Counter, Gauge

        self.version = Gauge("semconv_serving_version", description="1 for the version a replica serves",
                             tag_keys=("version",))
        self.failed = Gauge("semconv_reload_failed", description="1 while the last (re)load failed")
        self.reloads = Counter("semconv_reloads", description="(re)loads by result", tag_keys=("result",))
        self._shown: str | None = None

    def update(self, versions: Versions) -> None:
        ok = versions.last_error is None
        self.reloads.inc(tags={"result": "ok" if ok else "failed"})
        self.failed.set(0 if ok else 1)
        if versions.current_id != self._shown:
            if self._shown is not None:
                self.version.set(0, tags={"version": self._shown})
            if versions.current_id is not None:
                self.version.set(1, tags={"version": versions.current_id})
            self._shown = versions.current_id


R = TypeVar("R")


async def run_by_version(requests: Sequence[R], version_of: Callable[[R], Any],
                         run: Callable[[Any, list[R]], Awaitable[list]]) -> list:
    """Answers for a ``@serve.batch`` batch, in request order: ``run(version, requests)`` once per
    version among them, since requests resolved to two versions can share a batch during a
    switch and each must be answered by its own."""
    out: list = [None] * len(requests)
    for version in dict.fromkeys(version_of(r) for r in requests):
        idx = [i for i, r in enumerate(requests) if version_of(r) is version]
        for i, answer in zip(idx, await run(version, [requests[i] for i in idx])):
            out[i] = answer
    return out
