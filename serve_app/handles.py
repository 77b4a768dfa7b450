"""Calling another deployment of the app through its ``DeploymentHandle``: one mapping of what
can go wrong there onto what the client is told, so every route that waits on a deployment
answers overload and outages alike (429 / 503, never a 5xx)."""

from __future__ import annotations

import asyncio
from typing import Any

from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from serve_app import service


async def call_deployment(response, timeout_s: float, what: str) -> Any:
    """Await ``response`` (a ``DeploymentResponse``) for at most ``timeout_s``.

    A full queue (the deployment's ``max_queued_requests``) is :class:`service.Overloaded`
    (429); no answer in time (the call is cancelled, so it stops taking a replica slot), a dead
    replica or none up yet are :class:`service.Unavailable` (503). ``what`` names the work
    (``"tokenization"``) in the message.
    """
    try:
        return await asyncio.wait_for(response, timeout_s)
    except BackPressureError:
        raise service.Overloaded(f"{what} is at capacity (its queue is full): retry later") from None
    except TimeoutError:
        response.cancel()
        raise service.Unavailable(f"{what} did not answer within {timeout_s:g} s") from None
    except (RayActorError, DeploymentUnavailableError) as exc:
        raise service.Unavailable(f"{what} is unavailable ({type(exc).__name__}); retry") from None
