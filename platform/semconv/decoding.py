"""How a fine-tuned recommender is decoded: the prompt it continues and how its code scores are
normalised. The fine-tune stage writes this into ``model/recommender.json``; every loader
(precache, online serving, benchmarks) reads it, so decoding always matches training.

* ``prompt_format`` (``semconv.prompts``): ``history`` or ``instruction``.
* ``code_softmax``: ``vocabulary`` scores a code token by its log-probability under the whole
  vocabulary (the LLM's own softmax); ``level`` normalises over the code tokens of the level being
  decoded only, the set the constrained beam search chooses from. A model trained with the
  ``level`` loss (``finetune.code_softmax``) never learns to push text tokens down at code
  positions, so it must be decoded with ``level`` too.

No torch here: the precache driver reads it before any model loads.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from semconv.prompts import PROMPT_FORMATS

RECOMMENDER_FILE = "recommender.json"
CODE_SOFTMAXES = ("vocabulary", "level")


@dataclass(frozen=True)
class Decoding:
    prompt_format: str = "instruction"
    code_softmax: str = "vocabulary"

    def __post_init__(self):
        if self.prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"unknown prompt format {self.prompt_format!r}; known: {', '.join(PROMPT_FORMATS)}")
        if self.code_softmax not in CODE_SOFTMAXES:
            raise ValueError(f"unknown code_softmax {self.code_softmax!r}; known: {', '.join(CODE_SOFTMAXES)}")

    def save(self, model_dir: str | os.PathLike[str]) -> None:
        (Path(model_dir) / RECOMMENDER_FILE).write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, model_dir: str | os.PathLike[str]) -> Decoding:
        """What ``model/`` records; the defaults for artifacts written before this file existed."""
        path = Path(model_dir) / RECOMMENDER_FILE
        if not path.exists():
            return cls()
        data = json.loads(path.read_text())
        unknown = set(data) - {"prompt_format", "code_softmax"}
        if unknown:
            raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}")
        return cls(**data)
