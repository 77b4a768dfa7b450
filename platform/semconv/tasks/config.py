"""Config of the ``tasks`` stage (Alignment Tasks prompts written to ``sft/``).

``sequential_objective`` picks how next-item prediction is taught (see ``tasks.history``):
``history`` (default) writes one row per user with every next-item target of the training history
(row task ``history``); ``prompt`` writes the paper's one-target instruction prompts (row task
``sequential``). The fine-tuned model's inference prompt follows the choice. Either mixes with the
other tasks by weight (``weights.history`` / ``weights.sequential``).

Task groups switch on and off with booleans (``sequential``, ``negative``, ``text``, ``query``,
``ts_align``); finer control is per row-task name (see ``templates.TASK_NAMES``):

- ``weights``: a non-negative multiplier on a task's *train* rows (default 1). A task with ``n``
  base rows gets exactly ``round(w * n)`` rows: every base row ``floor(w)`` times, each copy
  with the next paraphrase, plus a seeded subset for the fractional part; 0 removes the task.
  For ``negative`` the base is ``negative_ratio`` rows per sequential train row of the protocol.
- ``templates``: replaces a task's list of instruction paraphrases (placeholders checked).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from semconv.schema import Section
from semconv.tasks.templates import TASK_NAMES, check_templates


class TasksConfig(Section):
    """Which Alignment Tasks to write and how (module docstring).

    Not in the lineage fingerprint (how the stage runs, not what it writes):
    ``rows_per_shard``, ``ray_data``, ``ray_min_rows``, ``batch_size`` (the local and
    Ray Data paths write the same rows).
    """

    sequential: bool = True
    sequential_objective: Literal["history", "prompt"] = Field(
        "history", description="history: every next item of a history in one row; prompt: one "
        "instruction prompt per target (the paper's sequential task)")
    negative: bool = True
    negative_ratio: int = Field(3, ge=0, description="negatives per positive (paper default 1:3)")
    text: bool = True
    query: bool = True
    query_source: Literal["auto", "reviews", "metadata"] = Field(
        "auto",
        description="auto: reviews when sequences/ has them (metadata queries for items no "
        "review covers), else item metadata (category leaf, brand, title keywords)",
    )
    query_keywords: int = Field(3, ge=0, description="title keywords in a metadata query")
    sa_init: bool = Field(False, description="write sft/sa_init.json (code token -> keywords)")
    ts_align: bool = Field(False, description="token-level code token <-> keywords task")
    keywords_per_token: int = Field(5, ge=1, description="keywords per code token (SA-Init, TS-Align)")
    weights: dict[str, float] = Field(default_factory=dict, description="task -> train row multiplier")
    templates: dict[str, list[str]] = Field(default_factory=dict, description="task -> paraphrases")
    max_text_words: int = Field(64, ge=1, description="descriptions and reviews are cut to this")
    max_valid_rows: int | None = Field(
        1024, ge=1, description="seeded subset of held-out sequential rows (None: every user)"
    )
    seed: int | None = Field(None, description="None: the pipeline seed")
    rows_per_shard: int = Field(500_000, ge=1, description="rows per Parquet file of sft/ (written as "
                                                           "built: the stage never holds them all)")
    ray_data: Literal["auto", "on", "off"] = Field(
        "auto", description="behaviour rows via Ray Data map_batches (auto: when large)"
    )
    ray_min_rows: int = Field(100_000, ge=0, description="auto uses Ray Data from this many train rows")
    batch_size: int = Field(4096, ge=1, description="train rows per map_batches batch")

    @field_validator("weights")
    @classmethod
    def _known_weights(cls, v: dict[str, float]) -> dict[str, float]:
        for task, w in v.items():
            if task not in TASK_NAMES:
                raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(TASK_NAMES)}")
            if not w >= 0:
                raise ValueError(f"weight of {task!r} must be >= 0, got {w}")
        return v

    @field_validator("templates")
    @classmethod
    def _valid_templates(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for task, templates in v.items():
            check_templates(task, templates)
        return v

    def weight(self, task: str) -> float:
        return float(self.weights.get(task, 1.0))
