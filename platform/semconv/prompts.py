"""Prompt formats shared by fine-tuning and inference.

Two formats, one per sequential objective (``tasks.sequential_objective``):

* ``instruction`` (the paper's per-prompt tasks, LC-Rec's Alpaca-style wrapper): a fixed
  preamble, an instruction that lists the history, ``### Response:``, then the label.
* ``history`` (the history-level objective): a short fixed header, then the items' code tokens
  back to back, oldest first (``HEADER<a_1><b_7>..<d_3><a_9>...``). A training row is a whole
  history, so a causal pass predicts every next item at once; the inference prompt for a
  history is exactly the training prefix that precedes the next item, and constrained beam
  search continues it. Items are a fixed number of code tokens each, so no separator is needed
  (~4 tokens an item instead of ~9 in the instruction wording).

Each format starts with fixed text, so a decoder computes that prefix's KV cache once and reuses
it for every user (:func:`shared_prefix`).
"""

from __future__ import annotations

from collections.abc import Sequence

from semconv.codes import item_tokens

PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n### Instruction:\n"
)
RESPONSE = "\n\n### Response:\n"

SEQUENTIAL_INSTRUCTION = (
    "The user has interacted with items {history} in chronological order. "
    "Can you predict the next possible item that the user may expect?"
)


HISTORY_HEADER = "Items a user interacted with, oldest first:\n"
PROMPT_FORMATS = ("instruction", "history")


def wrap(instruction: str) -> str:
    """The full prompt for an instruction; the label is appended right after it."""
    return f"{PREAMBLE}{instruction}{RESPONSE}"


def history_text(history_codes: Sequence[Sequence[int]]) -> str:
    return ", ".join(item_tokens(c) for c in history_codes)


def sequential_prompt(
    history_codes: Sequence[Sequence[int]], instruction: str = SEQUENTIAL_INSTRUCTION
) -> str:
    """The sequential-alignment prompt for a history (oldest first) of item code tuples."""
    return wrap(instruction.format(history=history_text(history_codes)))


def history_prompt(history_codes: Sequence[Sequence[int]]) -> str:
    """The history-format prompt: the header, then each item's code tokens, oldest first."""
    return HISTORY_HEADER + "".join(item_tokens(c) for c in history_codes)


def inference_prompt(prompt_format: str, history_codes: Sequence[Sequence[int]]) -> str:
    """The prompt a model trained with ``prompt_format`` continues with the next item's codes."""
    if prompt_format == "history":
        return history_prompt(history_codes)
    if prompt_format == "instruction":
        return sequential_prompt(history_codes)
    raise ValueError(f"unknown prompt format {prompt_format!r}; known: {', '.join(PROMPT_FORMATS)}")


def shared_prefix(prompt_format: str) -> str:
    """The fixed text every prompt of ``prompt_format`` starts with (its KV is computed once)."""
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"unknown prompt format {prompt_format!r}; known: {', '.join(PROMPT_FORMATS)}")
    return HISTORY_HEADER if prompt_format == "history" else PREAMBLE

