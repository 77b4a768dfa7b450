"""Calling the app's other deployments through their ``DeploymentHandle``: one mapping of what
can go wrong there onto what the client is told (429 / 503, never a 5xx the client cannot act
on), the replies that carry an error across a handle, and the wait that lets a version switch
flip only once every replica of a deployment holds the new version."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from serve_app import service

log = logging.getLogger("ray.serve")


async def call_deployment(response, timeout_s: float, what: str) -> Any:
    """Await ``response`` (a ``DeploymentResponse``) for at most ``timeout_s``.

    A full queue (the deployment's ``max_queued_requests``) is :class:`service.Overloaded`
    (429); no answer in time (the call is cancelled, so it stops taking a replica slot), a dead
    replica, none up yet, or an error raised there are :class:`service.Unavailable` (503).
    ``what`` names the work (``"tokenization"``) in the message.
    """
    try:
        return await asyncio.wait_for(response, timeout_s)
    except BackPressureError:
        raise service.Overloaded(f"{what} is at capacity (its queue is full): retry later") from None
    except TimeoutError:
        response.cancel()
        raise service.Unavailable(f"{what} did not answer within {timeout_s:g} s") from None
    except (RayActorError, DeploymentUnavailableError, RayTaskError) as exc:
        raise service.Unavailable(f"{what} is unavailable ({type(exc).__name__}); retry") from None


def as_reply(exc: Exception) -> dict:
    """An error as a plain reply (exceptions do not cross handles intact): 422 when the input is
    at fault, the exception's status when unavailable, 503 naming the error type otherwise."""
    if isinstance(exc, service.InvalidInput):
        return {"status": 422, "detail": exc.detail()}
    if isinstance(exc, service.Unavailable):
        return {"status": exc.status, "detail": str(exc)}
    log.error("semconv: a request failed", exc_info=exc)
    return {"status": 503, "detail": f"the request failed ({type(exc).__name__}); retry"}


def from_reply(reply: dict) -> Any:
    """The calling side of :func:`as_reply`: the body, or the error raised again."""
    status = reply["status"]
    if status == 200:
        return reply["body"]
    if status == 422:
        d = reply["detail"][0]
        raise service.InvalidInput(d["loc"], d["msg"], d["type"])
    raise (service.Overloaded if status == 429 else service.Unavailable)(service.redact(reply["detail"]))


async def _holds(handle, version_id: str) -> bool:
    try:
        return all(await handle.broadcast("holds", version_id).results_async(timeout_s=10))
    except Exception as exc:  # no replica up yet, one dying: ask again
        log.info("semconv: %s cannot say yet whether it holds version %s (%s)", handle.deployment_name,
                 version_id, type(exc).__name__)
        return False


async def await_version(handles: list, version_id: str, timeout_s: float, poll_s: float = 0.2) -> list[str]:
    """Wait until every running replica of each deployment behind ``handles`` holds
    ``version_id`` (its ``holds`` method, called on all of them by ``broadcast``); returns the
    deployments that still did not after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    waiting = list(handles)
    while True:
        waiting = [h for h in waiting if not await _holds(h, version_id)]
        if not waiting or loop.time() + poll_s >= deadline:
            return [h.deployment_name for h in waiting]
        await asyncio.sleep(poll_s)
