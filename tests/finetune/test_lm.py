"""The fine-tune's forward (``PackedLM``): a packed row's loss is its loss alone, the code rows are
read and trained as peft's trainable tokens would, and the level softmax scores only the level."""

from __future__ import annotations

import pytest
import torch

from semconv.finetune.data import SftExamples
from semconv.finetune.lm import CodeRowsError, PackedLM, code_rows
from semconv.finetune.model import build_finetune_model
from semconv.finetune.packing import EncodedRows, collate_packs, encode_rows, pack_rows

from .conftest import LEVELS, K, all_planted_histories, planted_example

pytestmark = pytest.mark.usefixtures("one_thread")


def _rows(tok, n: int = 12) -> tuple[EncodedRows, SftExamples]:
    pairs = [planted_example(h, t) for h, t in all_planted_histories()[:n]]
    # a text row (labels outside the code tokens, EOS appended) beside the code rows
    pairs.append(("Title of item <a_1><b_2><c_3><d_0>:", "relay capacitor kit"))
    examples = SftExamples([p for p, _ in pairs], [l for _, l in pairs])
    return encode_rows(tok, examples, 256), examples


def _alone(lm: PackedLM, rows: EncodedRows, i: int) -> torch.Tensor:
    return lm(**collate_packs(rows, [[i]], 256, 0))


@pytest.mark.parametrize("code_softmax", ["level", "vocabulary"])
def test_a_packed_row_scores_as_it_does_alone(tiny_lm_dir, code_softmax):
    model, tok, ids = build_finetune_model(tiny_lm_dir, LEVELS, K, lora={"r": 4, "alpha": 8, "dropout": 0.0})
    lm = PackedLM(model, ids, LEVELS, code_softmax).eval()
    rows, _ = _rows(tok)
    packs = pack_rows(rows.lengths(), list(range(len(rows))), 256)
    assert len(packs) < len(rows)  # several rows share a sequence
    packed = lm(**collate_packs(rows, packs, 256, tok.pad_token_id))
    alone = sum(_alone(lm, rows, i) for i in range(len(rows)))
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-4)
    # and a row is not seen by its neighbours: changing one row changes only its own loss
    changed = EncodedRows([x.copy() for x in rows.ids], rows.labels)
    changed.ids[0][: len(changed.ids[0]) // 2] = tok.eos_token_id
    mixed = lm(**collate_packs(changed, packs, 256, tok.pad_token_id))
    torch.testing.assert_close(mixed - _alone(lm, changed, 0), alone - _alone(lm, rows, 0), rtol=1e-5, atol=1e-4)


def test_the_vocabulary_loss_is_the_models_own_labels_loss(tiny_lm_dir):
    model, tok, ids = build_finetune_model(tiny_lm_dir, LEVELS, K, lora={"r": 4, "alpha": 8, "dropout": 0.0})
    with torch.no_grad():  # LoRA B starts at zero: move it, so the adapter is part of the check
        for name, p in model.named_parameters():
            if "lora_B" in name or "trainable_tokens_delta" in name:
                p.add_(torch.randn_like(p) * 0.1)
    lm = PackedLM(model, ids, LEVELS, "vocabulary").eval()
    rows, _ = _rows(tok)
    for i in (0, len(rows) - 1):
        batch = collate_packs(rows, [[i]], 256, 0)
        n = int((batch["labels"][:, 1:] != -100).sum())
        own = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss * n
        torch.testing.assert_close(lm(**batch), own, rtol=1e-5, atol=1e-4)


def test_the_level_softmax_normalises_over_the_targets_level_only(tiny_lm_dir):
    model, tok, ids = build_finetune_model(tiny_lm_dir, LEVELS, K, lora={"r": 4, "alpha": 8, "dropout": 0.0})
    lm = PackedLM(model, ids, LEVELS, "level").eval()
    rows, _ = _rows(tok, 1)
    batch = collate_packs(rows, [[0]], 256, 0)
    logits = model(input_ids=batch["input_ids"]).logits[0, :-1]
    targets = batch["labels"][0, 1:]
    want = torch.zeros(())
    for pos in torch.nonzero(targets != -100).flatten().tolist():
        t = int(targets[pos])
        if t not in ids:  # EOS after the codes: the whole vocabulary
            want = want - torch.log_softmax(logits[pos], -1)[t]
            continue
        level = (t - ids[0]) // K
        codes = ids[level * K : (level + 1) * K]
        want = want - torch.log_softmax(logits[pos, torch.tensor(codes)], -1)[codes.index(t)]
    torch.testing.assert_close(lm(**batch), want, rtol=1e-5, atol=1e-4)


def test_gradients_reach_only_lora_and_the_code_rows(tiny_lm_dir):
    model, tok, ids = build_finetune_model(tiny_lm_dir, LEVELS, K, lora={"r": 4, "alpha": 8, "dropout": 0.0})
    lm = PackedLM(model, ids, LEVELS, "level")
    rows, _ = _rows(tok)
    lm(**collate_packs(rows, [[0, 1]], 256, 0)).backward()
    got = {n for n, p in lm.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert got and all("lora_" in n or "trainable_tokens_delta" in n for n in got)
    assert any("trainable_tokens_delta" in n for n in got)
    assert code_rows(model, ids, LEVELS).code_in.shape == (LEVELS * K, model.config.hidden_size)


def test_code_tokens_that_are_not_one_range_are_refused(tiny_lm_dir):
    model, _, ids = build_finetune_model(tiny_lm_dir, LEVELS, K, method="full")
    with pytest.raises(CodeRowsError, match="trainable tokens are not its code tokens"):
        code_rows(model, ids[1:] + [ids[0] - 1], LEVELS)
