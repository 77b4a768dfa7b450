"""Only LoRA and the code-token rows learn; embeddings stay tied; SA-Init sets the new rows."""

from __future__ import annotations

import pytest
import torch

from semconv.finetune.data import split_examples
from semconv.finetune.lm import PackedLM
from semconv.finetune.model import build_finetune_model, load_base, trainable_state
from semconv.finetune.optim import build_optimizer
from semconv.finetune.packing import collate_packs, encode_rows
from semconv.finetune.step import optimizer_step

from .conftest import K, LEVELS, sft_table


def _effective_weights(peft_model) -> dict[str, torch.Tensor]:
    """The weights the model computes with: LoRA and token rows folded in (on a copy)."""
    import copy

    merged = copy.deepcopy(peft_model).merge_and_unload()
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}


def test_only_lora_and_code_rows_change_after_a_step(tiny_lm_dir):
    torch.manual_seed(0)
    model, tok, code_ids = build_finetune_model(tiny_lm_dir, LEVELS, K, lora={"r": 4, "alpha": 8, "dropout": 0.0})
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(("lora_" in n) or ("trainable_tokens_delta" in n) for n in trainable)

    all_before = {k: v.clone() for k, v in model.state_dict().items()}
    effective_before = _effective_weights(model)
    examples = split_examples(sft_table(8, 0), "train")
    batch = collate_packs(encode_rows(tok, examples, 512), [[0, 1, 2, 3], [4, 5, 6, 7]], 512, tok.pad_token_id)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = build_optimizer(params, lr=1e-2, weight_decay=0.0)
    optimizer_step(PackedLM(model, code_ids, LEVELS), [batch], opt, params, 1.0, False, torch.device("cpu"))

    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, all_before[k])}
    assert changed, "one step at lr 1e-2 must move some weight"
    assert all(("lora_" in k) or ("trainable_tokens_delta" in k) for k in changed), sorted(changed)[:5]
    assert any("lora_B" in k for k in changed) and any("trainable_tokens_delta" in k for k in changed)

    effective_after = _effective_weights(model)
    emb_key = "model.embed_tokens.weight"
    old = torch.ones(effective_after[emb_key].shape[0], dtype=torch.bool)
    old[code_ids] = False
    assert torch.equal(effective_after[emb_key][old], effective_before[emb_key][old])
    assert not torch.equal(effective_after[emb_key][~old], effective_before[emb_key][~old])
    for key in ("model.norm.weight", "model.layers.0.input_layernorm.weight"):
        assert torch.equal(effective_after[key], effective_before[key])


def test_embeddings_stay_tied_after_adding_tokens(tiny_lm_dir):
    model, tok, code_ids = build_finetune_model(tiny_lm_dir, LEVELS, K)
    merged = model.merge_and_unload()
    assert merged.get_input_embeddings().weight.shape[0] == len(tok)
    assert merged.get_output_embeddings().weight.data_ptr() == merged.get_input_embeddings().weight.data_ptr()
    # The peft wrapper feeds the same trained rows to the output layer.
    model2, tok2, _ = build_finetune_model(tiny_lm_dir, LEVELS, K)
    head = model2.base_model.model.lm_head
    emb = model2.base_model.model.model.embed_tokens
    assert head.token_adapter.trainable_tokens_delta is emb.token_adapter.trainable_tokens_delta


def test_sa_init_sets_code_rows_to_keyword_means(tiny_lm_dir):
    base, tok = load_base(tiny_lm_dir)
    table = base.get_input_embeddings().weight.detach().clone()
    keywords = {"<a_1>": ["relay", "capacitor"], "<b_2>": ["glove"]}
    model, tok2, code_ids = build_finetune_model(tiny_lm_dir, LEVELS, K, sa_init=keywords)
    rows = model.merge_and_unload().get_input_embeddings().weight.detach()
    for token, words in keywords.items():
        ids = [i for w in words for i in tok(" " + w, add_special_tokens=False)["input_ids"]]
        want = table[torch.tensor(ids)].mean(0)
        assert torch.allclose(rows[tok2.convert_tokens_to_ids(token)], want, atol=1e-6)
    # A token without keywords keeps the default init, which differs from every keyword mean.
    other = rows[tok2.convert_tokens_to_ids("<c_3>")]
    assert not torch.allclose(other, rows[tok2.convert_tokens_to_ids("<a_1>")])


def test_trainable_state_is_small(tiny_lm_dir):
    model, _, code_ids = build_finetune_model(tiny_lm_dir, LEVELS, K, lora={"r": 4, "alpha": 8})
    state = trainable_state(model)
    total = sum(v.numel() for v in state.values())
    hidden = model.get_input_embeddings().weight.shape[1]
    assert any(v.shape == (len(code_ids), hidden) for v in state.values())
    assert total < sum(p.numel() for p in model.parameters()) / 2


def test_a_shallower_model_round_trips_through_save_and_from_pretrained(tiny_lm_dir, tmp_path):
    """``finetune.num_layers``: the first N layers, saved whole, loaded by plain ``from_pretrained``."""
    from transformers import AutoModelForCausalLM

    from semconv.finetune.model import load_for_inference, save_recommender

    torch.manual_seed(0)
    model, tok, code_ids = build_finetune_model(tiny_lm_dir, LEVELS, K, lora={"r": 4, "alpha": 8, "dropout": 0.0},
                                                num_layers=1)
    with torch.no_grad():  # trained-looking adapter and code rows, so the merge is part of the check
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    ids = torch.tensor([[5, 9, 2, code_ids[3], code_ids[K + 1]]])
    want = model.eval()(input_ids=ids).logits.detach()
    save_recommender(tmp_path / "model", model, tok, whole=True)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert loaded.config.num_hidden_layers == 1 and len(loaded.model.layers) == 1
    torch.testing.assert_close(loaded(input_ids=ids).logits, want, rtol=1e-4, atol=1e-5)
    again, tok2 = load_for_inference(tmp_path / "model", "not-needed-for-a-whole-model")
    torch.testing.assert_close(again(input_ids=ids).logits, want, rtol=1e-4, atol=1e-5)
    assert len(tok2) == len(tok)
    with pytest.raises(ValueError, match="between 1 and the base's 2 layers"):
        build_finetune_model(tiny_lm_dir, LEVELS, K, num_layers=3)


def test_full_fine_tuning_trains_every_weight_and_the_code_rows_keep_their_own_group(tiny_lm_dir):
    model, _, code_ids = build_finetune_model(tiny_lm_dir, LEVELS, K, method="full")
    assert all(p.requires_grad for p in model.parameters())
    opt = build_optimizer(model.named_parameters(), lr=1e-3, weight_decay=0.0, code_token_lr_scale=10.0)
    assert [g.get("name") for g in opt.param_groups] == ["model", "code_rows"]
    rows = opt.param_groups[1]["params"]
    assert len(rows) == 1 and rows[0].shape[0] == len(code_ids)
