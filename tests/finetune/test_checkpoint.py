"""``model/`` (``save_final``) loads with plain Hugging Face calls into the model that was trained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from semconv.finetune.checkpoint import save_final
from semconv.finetune.model import build_finetune_model, load_for_inference

from .conftest import K, LEVELS

PROMPT = "The user has interacted with items <a_1><b_2><c_3><d_0> <a_3><b_0><c_1><d_2> next: <a_0><b_1>"


pytestmark = pytest.mark.usefixtures("one_thread")


def trained_model_dir(base: str | Path, out: Path) -> tuple[Path, torch.Tensor]:
    """``save_final`` of a finetune model whose LoRA and code rows moved away from their init;
    returns the directory and the logits the trained model gives on :data:`PROMPT`."""
    model, tok, code_ids = build_finetune_model(base, LEVELS, K, lora={"r": 4, "alpha": 8, "dropout": 0.0})
    torch.manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:  # lora_B starts at zero: without this the adapter is a no-op
                param.add_(0.1 * torch.randn_like(param))
    ids = tok(PROMPT, return_tensors="pt")
    assert set(code_ids) & set(ids["input_ids"][0].tolist()), "the prompt must exercise the code rows"
    model.eval()
    with torch.no_grad():
        logits = model(**ids).logits
    save_final(out, model, tok, {"steps": 0})
    return out, logits


def _logits(model, tokenizer) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(PROMPT, return_tensors="pt")).logits


def test_model_dir_loads_with_auto_peft_and_auto_tokenizer(tiny_lm_dir, tmp_path):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    model_dir, trained = trained_model_dir(tiny_lm_dir, tmp_path / "model")
    model = AutoPeftModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert tokenizer.convert_tokens_to_ids(["<a_0>", "<d_3>"]) == [len(tokenizer) - 16, len(tokenizer) - 1]

    ours, our_tokenizer = load_for_inference(model_dir, tiny_lm_dir)
    assert tokenizer(PROMPT)["input_ids"] == our_tokenizer(PROMPT)["input_ids"]
    plain = _logits(model, tokenizer)
    torch.testing.assert_close(plain, _logits(ours, our_tokenizer), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(plain, trained, rtol=1e-4, atol=1e-4)


def test_adapter_holds_the_code_rows_not_the_vocabulary(tiny_lm_dir, tmp_path):
    model_dir, _ = trained_model_dir(tiny_lm_dir, tmp_path / "model")
    with safe_open(str(model_dir / "adapter_model.safetensors"), "pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    rows = [s for k, s in shapes.items() if "trainable_tokens_delta" in k]
    assert [r[0] for r in rows] == [LEVELS * K], shapes  # one table for the tied embedding and lm_head
    assert all(not k.endswith(("embed_tokens.weight", "lm_head.weight")) for k in shapes), sorted(shapes)


def test_a_relative_base_path_is_saved_absolute(tiny_lm_dir, tmp_path, monkeypatch):
    """A config may name the base relative to the working directory; the adapter must still
    find it from anywhere."""
    from peft import AutoPeftModelForCausalLM

    monkeypatch.chdir(tiny_lm_dir.parent)
    model_dir, trained = trained_model_dir(Path(tiny_lm_dir.name), tmp_path / "model")
    base = json.loads((model_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert Path(base).is_absolute() and Path(base).samefile(tiny_lm_dir)

    monkeypatch.chdir(tmp_path)
    model = AutoPeftModelForCausalLM.from_pretrained(model_dir).eval()
    torch.testing.assert_close(_logits(model, load_for_inference(model_dir, tiny_lm_dir)[1]), trained,
                               rtol=1e-4, atol=1e-4)


def test_merged_dir_loads_with_auto_model(tiny_lm_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from semconv.finetune.stage import _save_merged

    model_dir, trained = trained_model_dir(tiny_lm_dir, tmp_path / "model")
    _save_merged(model_dir, tiny_lm_dir)
    merged = AutoModelForCausalLM.from_pretrained(model_dir / "merged").eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir / "merged")
    torch.testing.assert_close(_logits(merged, tokenizer), trained, rtol=1e-4, atol=1e-4)
