"""The one mapping of a deployment call's failures onto 429 / 503 (serve_app/handles.py)."""

from __future__ import annotations

import asyncio

import pytest
from ray.exceptions import RayActorError, RayTaskError
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


@pytest.mark.parametrize("exc", [RayActorError(), DeploymentUnavailableError("gone"),
                                 RayTaskError("tokenize", "Traceback ...", ValueError("raised there"))])
def test_a_dead_or_missing_replica_or_an_error_there_is_unavailable_never_a_500(exc):
    async def dead():
        raise exc

    with pytest.raises(service.Unavailable, match=rf"tokenization is unavailable \({type(exc).__name__}\)") as err:
        call(dead)
    assert not isinstance(err.value, service.Overloaded)  # a 503, not a 429


def test_errors_cross_a_handle_as_replies_and_an_unexpected_one_is_a_503_naming_its_type():
    from serve_app.handles import as_reply, from_reply

    with pytest.raises(service.InvalidInput, match="bad k") as err:
        from_reply(as_reply(service.InvalidInput(["body", "k"], "bad k")))
    assert err.value.loc == ["body", "k"]
    with pytest.raises(service.Overloaded):
        from_reply(as_reply(service.Overloaded("full")))
    reply = as_reply(KeyError("/srv/run/items"))
    assert reply == {"status": 503, "detail": "the request failed (KeyError); retry"}
    with pytest.raises(service.Unavailable, match="version abc is not loaded at <path>"):
        from_reply({"status": 503, "detail": "version abc is not loaded at /srv/run"})  # paths redacted
    assert from_reply({"status": 200, "body": {"codes": []}}) == {"codes": []}


class BroadcastHandle:
    """A handle whose replicas answer ``holds`` as ``answers`` says, one list per call."""

    def __init__(self, name: str, answers: list):
        self.deployment_name, self.answers, self.calls = name, answers, 0

    def broadcast(self, method: str, version_id: str):
        assert method == "holds"
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1

        class Response:
            @staticmethod
            async def results_async(timeout_s=None):
                if isinstance(answer, Exception):
                    raise answer
                return answer

        return Response


def test_await_version_waits_for_every_replica_of_every_deployment_and_names_the_laggards():
    from serve_app.handles import await_version

    later = BroadcastHandle("CodeTokenizer", [DeploymentUnavailableError("starting"), [True, False], [True, True]])
    ready = BroadcastHandle("ModelGenerator", [[True]])
    assert asyncio.run(await_version([later, ready], "v2", timeout_s=10, poll_s=0.01)) == []
    assert later.calls == 3 and ready.calls == 1  # a deployment that holds it is not asked again
    never = BroadcastHandle("ModelGenerator", [[False, True]])
    assert asyncio.run(await_version([never], "v2", timeout_s=0.1, poll_s=0.01)) == ["ModelGenerator"]
