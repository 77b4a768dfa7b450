"""run_tokenize end to end: inputs checked, codebook trained on Ray Train, unique codes written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from semconv.artifacts import ArtifactError, RunDir
from semconv.config import PipelineConfig
from semconv.codes import read_item_codes
from semconv.tokenize.cold_start import CodebookTokenizer
from semconv.tokenize.inputs import TokenizeInputError
from semconv.tokenize.stage import run_tokenize

from .tokenize_helpers import planted, write_inputs


def small_cfg(run_dir, **tokenize) -> PipelineConfig:
    base = dict(levels=3, codes_per_level=16, epochs=2, batch_size=256, kmeans_iters=5,
                checkpoint_every=1)
    return PipelineConfig(run_dir=str(run_dir), tokenize={**base, **tokenize})


def test_run_tokenize_writes_codebook_and_unique_item_codes(tmp_path, capsys):
    data = planted(n=500, seed=5)
    write_inputs(tmp_path, data, ids=np.arange(500))
    out = run_tokenize(small_cfg(tmp_path, num_workers=0))  # in-process: the same maths, no Ray
    rd = RunDir(tmp_path)
    assert rd.is_complete("codebook") and rd.is_complete("item_codes")
    ids, codes = read_item_codes(out["item_codes"])
    assert ids.tolist() == list(range(500)) and codes.shape == (500, 3)
    assert rd.read_table("item_codes").schema.field("codes").type.value_type.bit_width == 16
    assert len(np.unique(codes, axis=0)) == 500
    metrics = json.loads((tmp_path / "codebook" / "metrics.json").read_text())
    assert metrics["duplicates_after_resolution"] == 0
    assert len(metrics["utilisation"]) == 3
    assert metrics["quantization_error"] < metrics["input_norm"]
    assert "llm_projection_distance" in metrics and "text_alignment_distance" in metrics
    printed = capsys.readouterr().out
    assert "collision rate" in printed and "utilisation" in printed
    # the saved codebook reproduces the pre-resolution codes of every item (cold start)
    tok = CodebookTokenizer.from_pretrained(out["codebook"], item_codes=out["item_codes"])
    raw = tok(data.embeddings)
    moved = {r["item_id"] for r in json.loads((tmp_path / "codebook" / "collisions.json").read_text())}
    same = np.array([i not in moved for i in range(500)])
    np.testing.assert_array_equal(raw[same], codes[same])
    # the reported collision figures are those of these pre-resolution codes
    assert metrics["collision_rate"] == pytest.approx(1 - len(np.unique(raw, axis=0)) / 500)
    assert metrics["reassigned_items"] == len(moved) == int((raw != codes).any(1).sum())
    # a second run finds complete outputs and skips
    before = (tmp_path / "item_codes" / "_SUCCESS").read_text()
    run_tokenize(small_cfg(tmp_path, num_workers=0))
    assert (tmp_path / "item_codes" / "_SUCCESS").read_text() == before


@pytest.mark.slow  # about a minute here, mostly starting the Ray Train worker group
def test_run_tokenize_on_ray_train_checkpoints_into_the_run_dir(ray_local, tmp_path):
    data = planted(n=500, seed=5)
    write_inputs(tmp_path, data)
    out = run_tokenize(small_cfg(tmp_path, num_workers=1))
    runs = list((tmp_path / "_checkpoints").glob("tokenize-*"))
    assert len(runs) == 1 and list(runs[0].glob("checkpoint_*"))
    history = json.loads((tmp_path / "codebook" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    ids, codes = read_item_codes(out["item_codes"])
    assert len(np.unique(codes, axis=0)) == len(ids) == 500


def test_run_tokenize_checks_inputs_before_training(tmp_path):
    with pytest.raises(ArtifactError, match="item_emb"):
        run_tokenize(small_cfg(tmp_path))
    data = planted(n=40, seed=6)
    write_inputs(tmp_path, data)
    with pytest.raises(TokenizeInputError, match="fewer than tokenize.codes_per_level=64"):
        run_tokenize(small_cfg(tmp_path, codes_per_level=64))
    data.text[3, 0] = np.nan
    write_inputs(tmp_path, data)
    with pytest.raises(TokenizeInputError, match=r"item_text_emb: 1 embeddings contain NaN.*\[3\]"):
        run_tokenize(small_cfg(tmp_path))
    assert not RunDir(tmp_path).is_complete("codebook")
