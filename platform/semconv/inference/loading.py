"""Loading a recommender LLM for decoding (once per Ray actor).

The real path is the fine-tuned ``model/`` artifact: ``semconv.finetune.model.load_for_inference``
(base + code tokens + merged LoRA). :func:`load_with_random_code_tokens` is the stand-in used by
tests and benchmarks where no fine-tuned model exists: a base LM with the code tokens added and
their embedding rows drawn at random (seeded), so code tokens have distinct logits and beam search
has a real ranking to find. A :class:`ModelSpec` names either, and pickles cheaply to actors.

torch is imported where a model is loaded, not at module level: the precache job's Ray Data
read and filter tasks import this module's neighbours, and a worker that imports torch holds
~200 MB more (measured: 247 MB RSS after importing the precache module with torch, 51 MB for
pyarrow alone), which Ray Data's memory warnings then flagged per task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from semconv.decoding import Decoding

DTYPES = ("float32", "bfloat16", "float16")


def load_with_random_code_tokens(
    base_dir: str, levels: int, codes_per_level: int, dtype: torch.dtype | None = None, seed: int = 0
):
    """A base causal LM + tokenizer with ``levels x codes_per_level`` code tokens (tests/bench);
    ``dtype`` defaults to float32."""
    import torch

    from semconv.finetune.model import load_base, resize_for_code_tokens
    from semconv.finetune.tokenizer import add_code_tokens

    model, tokenizer = load_base(base_dir, torch.float32)
    ids = add_code_tokens(tokenizer, levels, codes_per_level)
    resize_for_code_tokens(model, tokenizer)
    emb = model.get_input_embeddings().weight
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        std = emb[: min(ids)].std().item()
        emb[ids] = torch.randn(len(ids), emb.shape[1], generator=gen) * std
        out = model.get_output_embeddings()
        if out is not None and out.weight.data_ptr() != emb.data_ptr():
            out.weight[ids] = emb[ids]
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(dtype or torch.float32).eval(), tokenizer


@dataclass(frozen=True)
class ModelSpec:
    """Which model an actor loads: a fine-tuned ``model/`` dir, or a base dir + random codes."""

    model_dir: str | None = None  # the finetune stage's model/ artifact
    base_model: str = "smollm2-135m"  # bundled name or HF directory
    dtype: str = "float32"
    code_levels: int = 4  # only for the random-code-token stand-in
    codes_per_level: int = 256
    seed: int = 0
    decoding: Decoding | None = None  # None: what model_dir records (the defaults for the stand-in)

    def __post_init__(self):  # checked where the spec is made (the driver), not in each actor
        if self.dtype not in DTYPES:
            raise ValueError(f"ModelSpec.dtype must be one of {DTYPES}, not {self.dtype!r}")

    def resolved_decoding(self) -> Decoding:
        """How to decode: explicit, else what ``model/`` was trained for (``model/recommender.json``)."""
        if self.decoding is not None:
            return self.decoding
        return Decoding.load(self.model_dir) if self.model_dir is not None else Decoding()

    def load(self):
        import torch

        dtype = getattr(torch, self.dtype)
        if self.model_dir is not None:
            from semconv.finetune.model import load_for_inference

            return load_for_inference(self.model_dir, self.base_model, dtype)
        from semconv.models import resolve

        return load_with_random_code_tokens(
            str(resolve(self.base_model)), self.code_levels, self.codes_per_level, dtype, self.seed
        )
