"""Config of the ``tasks`` stage (Alignment Tasks prompts)."""

from __future__ import annotations

from pydantic import Field

from semconv.schema import Section


class TasksConfig(Section):
    sequential: bool = True
    negative: bool = True
    negative_ratio: int = Field(3, ge=0, description="negatives per positive (paper default 1:3)")
    text: bool = True
    query: bool = True
    sa_init: bool = False
    ts_align: bool = False
