"""The app's arguments (``args:`` in the Serve config) and hot-reloadable ``user_config``."""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field

from serve_app.generation_schemas import GenerationArgs


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
    require_auth: bool = Field(False, description="refuse to start when the token variable is unset")
    docs: bool = Field(True, description="serve /docs and /openapi.json")
    load_deadline_s: float = Field(900, gt=0, description="a (re)load running longer fails the replica's health check")
    tokenize_timeout_s: float = Field(10, gt=0, description="a tokenize call answered 503 after this long")
    generation: GenerationArgs = Field(default_factory=GenerationArgs, description="online generation (POST /v1/recommendations)")

    def api_token(self) -> str | None:
        """The bearer token from the environment (a Kubernetes secret, a runtime_env env var)."""
        token = os.environ.get(self.api_token_env) or None
        if token is None and self.require_auth:
            raise RuntimeError(f"require_auth is set but ${self.api_token_env} is empty: refusing to serve unauthenticated")
        return token


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

    def target(self, args: AppArgs) -> tuple[str, str | None, bool]:
        """``(run_dir, precache, fallback)`` to serve."""
        run_dir = self.run_dir or args.run_dir
        precache = self.precache if self.precache is not None else (args.precache if self.run_dir is None else None)
        return run_dir, precache, self.fallback if self.fallback is not None else args.fallback
