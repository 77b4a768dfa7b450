"""Base class for every config section: typed, strict (unknown keys are errors), JSON-serialisable."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A config section. ``extra="forbid"`` turns a typo into an error naming the key path."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())
