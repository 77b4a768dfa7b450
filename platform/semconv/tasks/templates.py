"""Instruction templates of the Alignment Tasks: several paraphrases per task, as LC-Rec uses.

A template is an instruction with ``{field}`` placeholders; :func:`render` fills it and wraps it
with :func:`semconv.prompts.wrap`, so every prompt starts with the shared preamble (prefix KV
reuse at inference). The label is always the bare response text.

The first sequential template is the inference prompt itself (``prompts.SEQUENTIAL_INSTRUCTION``):
held-out (``valid``) rows use it, so the eval loss measures the prompt that serving decodes.
Defaults live here; ``tasks.templates`` in the YAML config replaces a task's list.
"""

from __future__ import annotations

import string
import zlib
from collections.abc import Mapping, Sequence

import numpy as np

from semconv.prompts import SEQUENTIAL_INSTRUCTION, sequential_prompt, wrap

# task -> (required placeholders, optional placeholders)
TEMPLATE_FIELDS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "sequential": (frozenset({"history"}), frozenset()),
    "negative": (frozenset({"history"}), frozenset()),
    "item2title": (frozenset({"item"}), frozenset()),
    "title2item": (frozenset({"title"}), frozenset()),
    "item2description": (frozenset({"item"}), frozenset()),
    "description2item": (frozenset({"description"}), frozenset()),
    "query2item": (frozenset({"query"}), frozenset()),
    "token2keywords": (frozenset({"token"}), frozenset({"level"})),
    "keywords2token": (frozenset({"keywords"}), frozenset({"level"})),
}
# ``history`` rows (tasks.history) use the fixed prompts.HISTORY_HEADER, not templates.
TASK_NAMES: tuple[str, ...] = tuple(TEMPLATE_FIELDS) + ("history",)

DEFAULT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "sequential": (
        SEQUENTIAL_INSTRUCTION,
        "Here is a user's interaction history, oldest first: {history}. "
        "Which item will the user interact with next?",
        "A user has engaged with {history}, in this order. Recommend the item they are most "
        "likely to choose next.",
        "Given the chronological sequence of items {history}, predict the user's next item.",
    ),
    "negative": (
        "The user has interacted with items {history} in chronological order. "
        "Which item is the user unlikely to interact with next?",
        "Here is a user's interaction history, oldest first: {history}. "
        "Name an item this user is not interested in.",
        "A user has engaged with {history}, in this order. "
        "Suggest an item the user would most likely ignore.",
    ),
    "item2title": (
        "What is the title of item {item}?",
        "Give the title of the item represented by {item}.",
        "Item {item} is sold under which title?",
    ),
    "title2item": (
        "Which item has the title \"{title}\"?",
        "Find the item whose title is: {title}",
        "An item is titled \"{title}\". What is its item code?",
    ),
    "item2description": (
        "Describe item {item}.",
        "What does the description of item {item} say?",
        "Write the product description of the item represented by {item}.",
    ),
    "description2item": (
        "Which item matches this description: \"{description}\"?",
        "An item is described as follows: {description} Which item is it?",
        "Identify the item from its description: {description}",
    ),
    "query2item": (
        "A user is looking for an item described as: \"{query}\". Which item fits best?",
        "Here is what a user wants: {query}. Recommend the matching item.",
        "Find the item that best answers the request \"{query}\".",
    ),
    "token2keywords": (
        "What do the items whose code contains the token {token} have in common?",
        "List keywords that describe the items sharing the code token {token}.",
    ),
    "keywords2token": (
        "Which level-{level} code token groups items about: {keywords}?",
        "Items described by the keywords {keywords} share which level-{level} code token?",
    ),
}


def template_fields(template: str) -> set[str]:
    """Placeholder names used by a ``str.format`` template (raises on a malformed one)."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def check_templates(task: str, templates: Sequence[str]) -> None:
    """Raise ValueError unless every template of ``task`` uses exactly its allowed fields."""
    if task not in TEMPLATE_FIELDS:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(TASK_NAMES)}")
    if not templates:
        raise ValueError(f"task {task!r} needs at least one template")
    required, optional = TEMPLATE_FIELDS[task]
    for i, t in enumerate(templates):
        try:
            used = template_fields(t)
        except ValueError as err:
            raise ValueError(f"template {i} of task {task!r} is malformed: {err}") from None
        missing, extra = required - used, used - required - optional
        if missing or extra:
            problems = [f"missing {{{name}}}" for name in sorted(missing)]
            problems += [f"unknown {{{name}}}" for name in sorted(extra)]
            raise ValueError(
                f"template {i} of task {task!r}: {'; '.join(problems)} "
                f"(allowed: {', '.join(sorted(required | optional))})"
            )


def resolve_templates(overrides: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
    """Defaults with the config's per-task replacements applied."""
    out = dict(DEFAULT_TEMPLATES)
    for task, templates in overrides.items():
        check_templates(task, templates)
        out[task] = tuple(templates)
    return out


def render(template: str, **fields: object) -> str:
    """The full prompt: the filled instruction inside the shared preamble."""
    return wrap(template.format(**fields))


def render_sequential(template: str, history_codes: Sequence[Sequence[int]]) -> str:
    """Sequential prompts go through ``prompts.sequential_prompt`` so training and inference
    format the history identically."""
    return sequential_prompt(history_codes, instruction=template)


# ---- deterministic template choice ------------------------------------------------------
_M = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _M
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _M
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _M
        return x ^ (x >> np.uint64(31))


def task_salt(task: str) -> int:
    return zlib.crc32(task.encode())


def row_hash(seed: int, task: str, keys: np.ndarray) -> np.ndarray:
    """A stable 64-bit hash of (seed, task, key) per key: the same row gets the same draw
    whatever the batching (local or Ray Data)."""
    base = _splitmix64(np.array([(seed & 0xFFFFFFFF) << 32 | task_salt(task)], dtype=np.uint64))
    return _splitmix64(np.asarray(keys, dtype=np.int64).astype(np.uint64) ^ base)


def template_choice(seed: int, task: str, keys: np.ndarray, repeat: np.ndarray | int, n: int) -> np.ndarray:
    """Template index per row: a hashed start, shifted by the repeat number so the copies of a
    row made by a weight > 1 use different paraphrases."""
    start = (row_hash(seed, task, keys) % np.uint64(n)).astype(np.int64)
    return (start + np.asarray(repeat, dtype=np.int64)) % n
