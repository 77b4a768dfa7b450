"""The app's arguments (``args:`` in the Serve config) and hot-reloadable ``user_config``."""

from __future__ import annotations

import ipaddress
import logging
import os

from pydantic import BaseModel, ConfigDict, Field

from semconv.serving.version import Target
from serve_app.generation_schemas import GenerationArgs

log = logging.getLogger("ray.serve")


def is_loopback(host: str | None) -> bool:
    """Whether an HTTP bind address is reachable only from this machine (None: unknown, so no)."""
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve_http_host() -> str | None:
    """The address Ray Serve's HTTP proxies bind (``http_options.host``), from the running
    controller; None when it cannot be asked (then the app treats the address as public)."""
    try:
        from ray.serve.context import _get_global_client

        client = _get_global_client(raise_if_no_controller_running=False)
        return client.http_config.host if client is not None else None
    except Exception:  # a Ray without this private API: fail closed
        return None


class AppArgs(BaseModel):
    """Arguments of :func:`serve_app.app.app_builder`, shared by every deployment of the app."""

    model_config = ConfigDict(extra="forbid")
    run_dir: str = Field(description="run directory with precache/, items/, item_codes/, codebook/, splits/")
    precache: str | None = Field(None, description="precache dir, URI or its _SUCCESS manifest (default <run_dir>/precache)")
    fallback: bool = Field(True, description="serve the train-split popularity top-K to unknown users (else 404)")
    max_batch: int = Field(256, ge=1, le=4096, description="most items in one tokenize request (the schema's cap)")
    max_body_bytes: int = Field(8 << 20, ge=1024, description="larger request bodies get 413")
    cache_dir: str | None = Field(None, description="local dir for the memory-mapped precache arrays")
    api_token_env: str = Field("SEMCONV_API_TOKEN", description="environment variable holding the bearer token; "
                               "when it is set, every /v1 route requires `Authorization: Bearer <token>`")
    require_auth: bool | None = Field(None, description="null: a token is required unless Serve binds a loopback "
                                      "address; true: always; false: never (a private network; logged loudly)")
    docs: bool = Field(False, description="serve /docs and /openapi.json")
    load_deadline_s: float = Field(900, gt=0, description="a replica that has not loaded its target version within "
                                   "this long fails to start, or fails its health check (Serve replaces it)")
    tokenize_timeout_s: float = Field(10, gt=0, description="a tokenize call answered 503 after this long")
    generation: GenerationArgs = Field(default_factory=GenerationArgs, description="online generation (POST /v1/recommendations)")

    def api_token(self, host: str | None) -> str | None:
        """The bearer token from the environment (a Kubernetes secret, a runtime_env env var).

        Closed by default: without a token the app refuses to start when Serve listens on
        ``host`` beyond loopback (or ``require_auth`` is true), unless ``require_auth`` is
        explicitly false.
        """
        token = os.environ.get(self.api_token_env) or None
        if token is not None:
            return token
        how = (f"set ${self.api_token_env} (runtime_env env_vars, or a Kubernetes secret) to a random token, "
               f"or set require_auth: false to serve a private network without one")
        if self.require_auth:
            raise RuntimeError(f"require_auth is true but ${self.api_token_env} is empty: refusing to serve "
                               f"unauthenticated; {how}")
        if self.require_auth is None and not is_loopback(host):
            raise RuntimeError(f"Serve listens on {host or 'an unknown address'} and ${self.api_token_env} is empty: "
                               f"refusing to serve every user's recommendations unauthenticated; {how}")
        if self.require_auth is False and not is_loopback(host):
            log.warning("semconv: SERVING WITHOUT AUTHENTICATION on %s (require_auth: false): anyone who can reach "
                        "the port reads every user's recommendations", host or "an unknown address")
        return None


class ServeUserConfig(BaseModel):
    """``user_config`` of every deployment: a version to switch to, in place (no restart).

    ``run_dir`` switches the whole version (catalogue, codes, codebook, fallback and its
    precache) together; ``precache`` only the precache (checked against the run dir's inputs).
    Unset keys fall back to the app's ``args``.
    """

    model_config = ConfigDict(extra="forbid")
    run_dir: str | None = None
    precache: str | None = None
    fallback: bool | None = None

    def target(self, args: AppArgs) -> Target:
        """The version to serve: every deployment derives the same one (and its id) from it."""
        run_dir = self.run_dir or args.run_dir
        precache = self.precache if self.precache is not None else (args.precache if self.run_dir is None else None)
        return Target(run_dir, precache, self.fallback if self.fallback is not None else args.fallback)
