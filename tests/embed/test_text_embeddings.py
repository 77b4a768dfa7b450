"""LLM text embeddings: the mean of the model's input-layer token embeddings over an item's
title + description tokens, truncated at max_tokens (no forward pass)."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from semconv.embed.text import (
    TextEmbedder,
    TextEmbeddingError,
    item_text,
    load_input_embeddings,
    mean_token_embeddings,
)


@pytest.fixture(scope="module")
def full_table(tiny_lm_dir) -> np.ndarray:
    """The input embeddings as the full model sees them (an independent load path)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir, trust_remote_code=False)
    return model.get_input_embeddings().weight.detach().numpy()


def batch(titles, descriptions) -> pa.Table:
    return pa.table({"item_id": pa.array(range(len(titles)), pa.int64()),
                     "title": titles, "description": descriptions})


def test_item_text_joins_stripped_title_and_description():
    assert item_text(" Relay kit ", "12V relay. ") == "Relay kit 12V relay."
    assert item_text("Relay kit", "") == "Relay kit"
    assert item_text(None, None) == ""


def no_full_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the whole model was loaded")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)


def test_only_the_embedding_matrix_is_read_and_it_matches_the_full_model(tiny_lm_dir, full_table, monkeypatch):
    no_full_model_load(monkeypatch)
    np.testing.assert_array_equal(load_input_embeddings(tiny_lm_dir).numpy(), full_table)


def test_embedding_equals_hand_computed_mean_of_input_embeddings(tiny_lm_dir, full_table):
    titles = ["Digital thermometer", "Lab glass bottle", "Torque"]
    descs = ["A steel sensor with battery.", "", "meter kit"]
    out = TextEmbedder(str(tiny_lm_dir), max_tokens=256)(batch(titles, descs))
    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    assert out.column("item_id").to_pylist() == [0, 1, 2]
    assert out.schema.field("embedding").type == pa.list_(pa.float32(), full_table.shape[1])
    got = np.array(out.column("embedding").to_pylist())
    for i, text in enumerate(["Digital thermometer A steel sensor with battery.", "Lab glass bottle",
                              "Torque meter kit"]):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert len(ids) > 1
        np.testing.assert_allclose(got[i], full_table[ids].mean(0), rtol=1e-5, atol=1e-6)


def test_truncates_at_max_tokens(tiny_lm_dir, full_table):
    text = "Digital thermometer with a steel sensor"
    ids = AutoTokenizer.from_pretrained(tiny_lm_dir)(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > 3
    out = TextEmbedder(str(tiny_lm_dir), max_tokens=3)(batch([text], [""]))
    np.testing.assert_allclose(out.column("embedding").to_pylist()[0], full_table[ids[:3]].mean(0),
                               rtol=1e-5, atol=1e-6)
    assert out.column("num_tokens").to_pylist() == [3]


def test_item_without_text_gets_the_mean_of_all_embeddings(tiny_lm_dir, full_table):
    out = TextEmbedder(str(tiny_lm_dir), max_tokens=8)(batch(["", "Relay"], [" ", ""]))
    np.testing.assert_allclose(out.column("embedding").to_pylist()[0], full_table.mean(0), rtol=1e-5, atol=1e-6)
    assert out.column("num_tokens").to_pylist()[0] == 0


def test_works_for_another_architecture_gpt2(tmp_path, tiny_lm_dir, monkeypatch):
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2))
    model.save_pretrained(tmp_path / "gpt2")
    for f in tiny_lm_dir.iterdir():
        if "token" in f.name:
            shutil.copy(f, tmp_path / "gpt2" / f.name)
    no_full_model_load(monkeypatch)
    np.testing.assert_array_equal(load_input_embeddings(tmp_path / "gpt2").numpy(),
                                  model.get_input_embeddings().weight.detach().numpy())
    out = TextEmbedder(str(tmp_path / "gpt2"), max_tokens=16)(batch(["Relay kit"], [""]))
    assert len(out.column("embedding").to_pylist()[0]) == 16


def test_falls_back_to_the_full_model_without_safetensors(tmp_path, tiny_lm_dir, full_table):
    shutil.copytree(tiny_lm_dir, tmp_path / "bin")
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir, trust_remote_code=False)
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    (tmp_path / "bin" / "model.safetensors").unlink()
    np.testing.assert_array_equal(load_input_embeddings(tmp_path / "bin").numpy(), full_table)


def test_token_ids_outside_the_embeddings_are_a_clear_error():
    with pytest.raises(TextEmbeddingError, match="token id 5 is outside the input embeddings"):
        mean_token_embeddings([[1, 5]], torch.zeros(4, 2))
