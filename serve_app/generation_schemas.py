"""Online generation's app arguments and request / response bodies (no Ray imports, so
``serve_app.config`` can hold :class:`GenerationArgs` without an import cycle)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_HISTORY_ITEMS = 4096  # a posted history may be longer than max_len: the prompt keeps the last
INT64_MAX = 2**63 - 1


class GenerationArgs(BaseModel):
    """``generation:`` in the app's args (the model deployment's resources live in its own
    ``deployments:`` entry: ``ray_actor_options``, autoscaling, ``max_queued_requests``)."""

    model_config = ConfigDict(extra="forbid")
    bf16: bool | Literal["auto"] = Field(
        "auto", description="auto: the dtype the run's precache recorded, so a precached user's history gets "
        "their precached list (without a precache: bf16 on a GPU or a CPU with native bf16, else float32); "
        "true / false force bf16 / float32")
    max_len: int | None = Field(None, ge=1, description="prompts keep the last max_len items (None: splits/ max_len)")
    max_num_beams: int | None = Field(None, ge=1, description="largest per-request num_beams (None: the precache's)")
    timeout_s: float = Field(10.0, gt=0, description="a generation request not answered by then gets 503")
    max_inflight: int = Field(32, ge=1, description="generation requests one ingress replica holds; more get 429, "
                                                     "so generation never takes the slots lookups need")
    torch_threads: int | None = Field(None, ge=1, description="None: the CPUs the model replica reserves")
    cpu_priority: Literal["normal", "low", "idle"] = Field(
        "idle", description="the CPU model replica's beam search runs at this priority: idle (SCHED_IDLE: only "
        "CPU time nothing else on the node wants, so lookups and the proxy go first; starves generation on a node "
        "kept busy by other work), low (nice 19), normal (as Ray starts workers). Ignored on a GPU")


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"history": [1, 2, 3], "k": 5}]})
    history: list[Annotated[int, Field(ge=0, le=INT64_MAX)]] | None = Field(
        None, min_length=1, max_length=MAX_HISTORY_ITEMS, description="item ids, oldest first")
    source_history: list[Annotated[str, Field(max_length=256)]] | None = Field(
        None, min_length=1, max_length=MAX_HISTORY_ITEMS, description="the dataset's item ids, oldest first")
    k: int | None = Field(None, ge=1, description="how many items (default min(10, num_beams); at most num_beams)")
    num_beams: int | None = Field(None, ge=1, description="beam width (default the precache's; at most max_num_beams)")


class GeneratedRecommendations(BaseModel):
    k: int
    version: str = Field(description="the model version the list came from")
    fallback: bool = Field(False, description="always false: the model answered")
    num_beams: int
    history_used: int = Field(description="history items in the prompt (the last max_len)")
    item_ids: list[int]
    source_ids: list[str]
    titles: list[str]
    scores: list[float] = Field(description="log-probability of each item's code tokens, best first")
