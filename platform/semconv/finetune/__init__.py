"""Alignment Tasks fine-tuning: code tokens + LoRA on Ray Train (``run_finetune``).

Heavy modules (torch, transformers, Ray) load on first use, so importing the config stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["add_code_tokens", "load_for_inference", "run_finetune", "train_func"]

_HOME = {"add_code_tokens": "tokenizer", "load_for_inference": "model", "run_finetune": "stage",
         "train_func": "recipe"}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        import importlib

        return getattr(importlib.import_module(f"semconv.finetune.{_HOME[name]}"), name)
    raise AttributeError(f"module 'semconv.finetune' has no attribute {name!r}")
