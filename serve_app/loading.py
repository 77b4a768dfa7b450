"""Versions a replica serves: the first load before any traffic, reloads on the side, a deadline.

Serve routes to a replica only once its constructor returns, so each deployment awaits
:meth:`Versioned.first` in its (async) constructor: a replica never answers 503 for its whole
first load, and a first load that fails or overruns the deadline fails the replica's start
(Serve retries it and ``serve status`` shows the error). A reload (``reconfigure``) builds the
new version in a thread while the old one keeps serving, then swaps one reference; a failed
reload keeps the old version and is reported (``last_error``, metrics). A reload still running
past the deadline makes :meth:`Versioned.check` (called from ``check_health``) fail, so Serve
replaces a replica whose load hung instead of calling it healthy forever.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from serve_app.service import redact

T = TypeVar("T")
log = logging.getLogger("ray.serve")


class Versioned(Generic[T]):
    """The current version of one thing (a serving state, a tokenizer) and its load history."""

    def __init__(self, load: Callable[[Any, T | None], T], deadline_s: float, what: str,
                 on_change: Callable[["Versioned[T]"], None] | None = None):
        self.load_fn, self.deadline_s, self.what = load, deadline_s, what
        self.on_change = on_change or (lambda _: None)
        self.current: T | None = None
        self.target: Any = None
        self.last_error: str | None = None
        self.reloads = 0  # versions published (the first load counts)
        self.failures = 0
        self._generation = 0
        self._started: float | None = None  # monotonic start of the load in progress

    @property
    def loading(self) -> bool:
        return self._started is not None

    async def first(self, target: Any) -> T:
        """Load ``target`` within the deadline or raise (the replica then fails to start)."""
        try:
            await asyncio.wait_for(self.load(target), self.deadline_s)
        except TimeoutError:
            raise TimeoutError(f"{self.what}: first load did not finish within {self.deadline_s:.0f} s") from None
        if not self.reloads:
            raise RuntimeError(f"{self.what}: first load failed: {self.last_error}")
        return self.current

    async def load(self, target: Any) -> bool:
        """Load ``target`` in a thread and publish it; False (old version kept) on failure or
        when a newer load started meanwhile."""
        self._generation += 1
        generation = self._generation
        self.target, self._started = target, time.monotonic()
        try:
            new = await asyncio.to_thread(self.load_fn, target, self.current)
        except Exception as exc:
            if generation == self._generation:
                self.last_error = redact(f"{type(exc).__name__}: {exc}")
                self.failures += 1
                self._started = None
                log.exception("semconv: loading %s %s failed; still serving the previous version", self.what, target)
                self.on_change(self)
            return False
        if generation != self._generation:
            return False  # superseded: the newer load publishes
        self.current, self.last_error, self._started = new, None, None
        self.reloads += 1
        self.on_change(self)
        return True

    async def switch(self, target: Any) -> bool:
        """Load ``target`` unless it is the one already served (after a failed load, retry it):
        what every deployment's ``reconfigure`` does with the version its ``user_config`` names."""
        if target == self.target and self.last_error is None:
            return False
        return await self.load(target)

    def check(self) -> None:
        """Raise when nothing is loaded or a load has run past the deadline (for ``check_health``)."""
        if not self.reloads:
            raise RuntimeError(f"{self.what}: nothing loaded (last error: {self.last_error})")
        if self._started is not None and time.monotonic() - self._started > self.deadline_s:
            raise RuntimeError(f"{self.what}: a reload has run {time.monotonic() - self._started:.0f} s, "
                               f"past the {self.deadline_s:.0f} s deadline")

    def status(self) -> dict:
        return {"reloading": self.loading, "reloads": self.reloads,
                "reload_failures": self.failures, "last_error": self.last_error}


class VersionMetrics:
    """Prometheus metrics of a replica's version (``ray_semconv_*``; Serve adds the deployment,
    replica and application tags), created inside the replica: the version served (a 1-valued
    gauge tagged with it), reload outcomes, whether the last (re)load failed."""

    def __init__(self):
        from ray.serve.metrics import Counter, Gauge

        self.version = Gauge("semconv_serving_version", description="1 for the version a replica serves",
                             tag_keys=("version",))
        self.failed = Gauge("semconv_reload_failed", description="1 while the last (re)load failed")
        self.reloads = Counter("semconv_reloads", description="(re)loads by result", tag_keys=("result",))
        self._shown: str | None = None

    def update(self, versioned: Versioned, version: str | None) -> None:
        ok = versioned.last_error is None
        self.reloads.inc(tags={"result": "ok" if ok else "failed"})
        self.failed.set(0 if ok else 1)
        if version != self._shown:
            if self._shown is not None:
                self.version.set(0, tags={"version": self._shown})
            if version is not None:
                self.version.set(1, tags={"version": version})
            self._shown = version


R = TypeVar("R")


async def run_by_version(requests: Sequence[R], version_of: Callable[[R], Any],
                         run: Callable[[Any, list[R]], Awaitable[list]]) -> list:
    """Answers for a ``@serve.batch`` batch, in request order: ``run(version, requests)`` once per
    version among them, since a reload can land while a batch is filling and each request must
    be answered by the version it was checked against."""
    out: list = [None] * len(requests)
    for version in dict.fromkeys(version_of(r) for r in requests):
        idx = [i for i, r in enumerate(requests) if version_of(r) is version]
        for i, answer in zip(idx, await run(version, [requests[i] for i in idx])):
            out[i] = answer
    return out
