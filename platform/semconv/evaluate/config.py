"""Config of the ``evaluate`` stage."""

from __future__ import annotations

from pydantic import Field

from semconv.schema import Section


class EvaluateConfig(Section):
    ks: list[int] = Field(default_factory=lambda: [1, 5, 10])
    baselines: list[str] = Field(default_factory=lambda: ["popularity", "sasrec", "cf"])
