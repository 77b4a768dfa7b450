"""The fine-tune's forward pass: the decoder once over packed rows, logits only where labels are.

A step's cost should be the decoder's matmuls. Two things around them cost as much on a CPU when
the model runs through its own ``forward``:

* **The vocabulary.** peft's trainable code rows (``trainable_token_indices``) rebuild the whole
  embedding matrix (49k+ rows) with the new rows copied in, twice per forward (input and tied
  output), and the output projection's backward forms a gradient for every row, only for peft to
  keep 1,024 of them. Here the text rows are read frozen and the code rows are a separate
  ``(n_codes, d)`` tensor (peft's own ``trainable_tokens_delta``, so the saved adapter is
  unchanged): embedding is a gather from one or the other, and a code-token label is scored by
  ``h @ code_rows[level].T`` only (``finetune.code_softmax: level``: the K codes constrained
  decoding chooses among at that position), a matmul 200x smaller than the vocabulary's. Text
  labels (titles, EOS) still get the full-vocabulary softmax.
* **Padding.** Rows arrive packed (:mod:`semconv.finetune.packing`): the attention mask is block
  diagonal, so no row sees another, and position ids restart per row.

:class:`PackedLM` is an ``nn.Module`` whose ``forward`` returns the summed loss, so DDP and
DeepSpeed wrap it like any model (their gradient hooks need the forward to go through them). The
loss equals the model's own ``labels=`` loss on each row alone (``tests/finetune/test_lm.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from semconv.finetune.losses import level_softmax_loss, vocabulary_loss


class CodeRowsError(ValueError):
    """A model whose code tokens are not one contiguous id range at the vocabulary's end."""


@dataclass
class CodeRows:
    """The vocabulary as the fine-tune reads it: text rows (frozen under LoRA) and code rows.

    Code tokens are ids ``[first, first + levels * per_level)``, level-major. ``code_in`` /
    ``code_out`` are the trainable rows (the same tensor when embeddings are tied); ``text_in`` /
    ``text_out`` the full matrices, whose code rows are never read.
    """

    first: int
    levels: int
    per_level: int
    text_in: torch.Tensor
    code_in: torch.Tensor
    text_out: torch.Tensor
    code_out: torch.Tensor
    embed_scale: torch.Tensor | None = None

    @property
    def count(self) -> int:
        return self.levels * self.per_level

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings: text ids from the base matrix, code ids from the code rows."""
        code = (ids >= self.first) & (ids < self.first + self.count)
        text = F.embedding(ids.masked_fill(code, 0), self.text_in)
        rows = F.embedding((ids - self.first).clamp(0, self.count - 1), self.code_in)
        out = torch.where(code[..., None], rows.to(text.dtype), text)
        return out * self.embed_scale.to(out.dtype) if self.embed_scale is not None else out

    def level_logits(self, h: torch.Tensor, level: int) -> torch.Tensor:
        """Logits over level ``level``'s K code tokens, ``(n, K)``."""
        rows = self.code_out[level * self.per_level : (level + 1) * self.per_level]
        return h @ rows.to(h.dtype).T

    def vocab_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Logits over the whole vocabulary, code rows included, ``(n, V)``."""
        end = self.first + self.count
        parts = [h @ self.text_out[: self.first].to(h.dtype).T, h @ self.code_out.to(h.dtype).T]
        if self.text_out.shape[0] > end:
            parts.append(h @ self.text_out[end:].to(h.dtype).T)
        return torch.cat(parts, dim=-1)


def _check_contiguous(code_ids: list[int], vocab: int) -> int:
    first = min(code_ids)
    if list(code_ids) != list(range(first, first + len(code_ids))) or first + len(code_ids) > vocab:
        raise CodeRowsError(
            f"code token ids must be one contiguous range inside the vocabulary of {vocab} rows "
            f"(got {code_ids[0]}..{code_ids[-1]}, {len(code_ids)} ids): add them with "
            "semconv.finetune.tokenizer.add_code_tokens to a tokenizer without them")
    return first


def _token_adapter(module: Any) -> Any:
    """peft's trainable-tokens layer of an embedding or LM head (wrapped beside LoRA, or the
    module itself), or None."""
    if hasattr(module, "token_adapter"):
        return module.token_adapter
    return module if hasattr(module, "trainable_tokens_delta") else None


def code_rows(model: Any, code_ids: list[int], levels: int) -> CodeRows:
    """The :class:`CodeRows` of a fine-tune model: a peft model whose code rows are
    ``trainable_token_indices`` (LoRA), or a plain causal LM trained whole (full fine-tuning)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    emb, out = base.get_input_embeddings(), base.get_output_embeddings()
    adapter = _token_adapter(emb)
    if adapter is not None:  # peft trainable tokens (beside LoRA, or alone for full fine-tuning)
        name = adapter.active_adapters[0] if adapter.active_adapters else "default"
        ids = list(adapter.token_indices[name])
        if sorted(ids) != sorted(code_ids):
            raise CodeRowsError("the model's trainable tokens are not its code tokens")
        text_in = adapter.base_layer.weight
        first = _check_contiguous(ids, text_in.shape[0])
        order = torch.as_tensor(ids).argsort()
        delta = adapter.trainable_tokens_delta[name]
        code_in = delta if bool((order == torch.arange(len(ids))).all()) else delta[order]
        scale = adapter._get_embed_scale()
    else:
        text_in = emb.weight
        first = _check_contiguous(list(code_ids), text_in.shape[0])
        code_in = text_in[first : first + len(code_ids)]
        scale = getattr(emb, "embed_scale", None)
    out_adapter = _token_adapter(out)
    if out_adapter is not None:  # tied: peft shares the input adapter's delta
        text_out, code_out = out_adapter.base_layer.weight, code_in
    else:
        text_out = out.weight
        code_out = code_in if text_out is text_in else text_out[first : first + len(code_ids)]
    return CodeRows(first, levels, len(code_ids) // levels, text_in, code_in, text_out, code_out,
                    scale if isinstance(scale, torch.Tensor) else None)


def decoder_of(model: Any) -> torch.nn.Module:
    """The transformer body (embeddings in, final-norm hidden states out) of a causal LM."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, base.base_model_prefix)


class PackedLM(torch.nn.Module):
    """A fine-tune model whose ``forward(batch)`` is the summed label loss of a packed batch.

    ``code_softmax``: ``level`` (a code label's softmax is its level's code tokens) or
    ``vocabulary`` (the LLM's full softmax for every label).
    """

    def __init__(self, model: Any, code_ids: list[int], levels: int, code_softmax: str = "level"):
        super().__init__()
        if code_softmax not in ("level", "vocabulary"):
            raise ValueError(f"finetune.code_softmax must be 'level' or 'vocabulary', not {code_softmax!r}")
        self.model = model
        self.code_ids, self.levels, self.code_softmax = list(code_ids), levels, code_softmax

    def rows(self) -> CodeRows:
        return code_rows(self.model, self.code_ids, self.levels)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
        """Summed next-token loss over the label tokens. ``attention_mask`` is the packed batch's
        ``(B, 1, S, S)`` boolean mask; a label is predicted from the position before it, never
        across a row boundary (where ``position_ids`` restarts)."""
        rows = self.rows()
        hidden = decoder_of(self.model)(
            inputs_embeds=rows.embed(input_ids), attention_mask=attention_mask, position_ids=position_ids,
            use_cache=False,
        ).last_hidden_state
        keep = (labels[:, 1:] != -100) & (position_ids[:, 1:] != 0)
        h = hidden[:, :-1][keep]
        targets = labels[:, 1:][keep]
        if self.code_softmax == "level":
            return level_softmax_loss(rows, h, targets)
        return vocabulary_loss(rows, h, targets)
