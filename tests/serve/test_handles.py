"""The one mapping of a deployment call's failures onto 429 / 503 (serve_app/handles.py)."""

from __future__ import annotations

import asyncio

import pytest
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from serve_app import service
from serve_app.handles import call_deployment


class FakeResponse:
    """Awaitable like a DeploymentResponse: runs ``behave`` and records a cancel."""

    def __init__(self, behave):
        self.behave, self.cancelled = behave, False

    def __await__(self):
        return self.behave().__await__()

    def cancel(self):
        self.cancelled = True


def call(behave, timeout_s=1.0):
    response = FakeResponse(behave)
    try:
        return asyncio.run(call_deployment(response, timeout_s, "tokenization")), response
    except Exception as exc:
        exc.response = response
        raise


def test_an_answer_comes_back_as_it_is():
    async def ok():
        return {"status": 200}

    assert call(ok)[0] == {"status": 200}


def test_a_full_queue_is_overloaded_and_a_late_answer_unavailable_and_cancelled():
    async def full():
        raise BackPressureError(num_queued_requests=64, max_queued_requests=64)

    async def slow():
        await asyncio.sleep(5)

    with pytest.raises(service.Overloaded, match="tokenization is at capacity"):
        call(full)
    with pytest.raises(service.Unavailable, match="tokenization did not answer within 0.05 s") as err:
        call(slow, 0.05)
    assert err.value.response.cancelled


@pytest.mark.parametrize("exc", [RayActorError(), DeploymentUnavailableError("gone")])
def test_a_dead_or_missing_replica_is_unavailable_never_a_500(exc):
    async def dead():
        raise exc

    with pytest.raises(service.Unavailable, match=rf"tokenization is unavailable \({type(exc).__name__}\)") as err:
        call(dead)
    assert not isinstance(err.value, service.Overloaded)  # a 503, not a 429
