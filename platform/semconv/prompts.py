"""Prompt format shared by fine-tuning and inference (LC-Rec's Alpaca-style wrapper).

Every training and inference prompt starts with the same fixed preamble, so a decoder can
compute its KV cache once and reuse it for every user (prefix KV reuse). The response (label)
follows ``### Response:`` directly.
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
