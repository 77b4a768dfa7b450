"""Code tokens join the vocabulary once, as single ids that spell items back."""

from __future__ import annotations

from transformers import AutoTokenizer

from semconv.codes import all_code_tokens, item_tokens
from semconv.finetune.tokenizer import add_code_tokens


def test_code_tokens_are_added_once_as_single_ids(tiny_lm_dir):
    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    before = len(tok)
    ids = add_code_tokens(tok, levels=4, codes_per_level=8)
    assert len(tok) == before + 32
    assert ids == list(range(before, before + 32))
    for token, i in zip(all_code_tokens(4, 8), ids):
        assert tok(token, add_special_tokens=False)["input_ids"] == [i]

    again = add_code_tokens(tok, levels=4, codes_per_level=8)
    assert again == ids and len(tok) == before + 32


def test_item_codes_round_trip_through_the_tokenizer(tiny_lm_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    added = add_code_tokens(tok, levels=4, codes_per_level=8)
    codes = (3, 7, 0, 5)
    ids = tok(item_tokens(codes), add_special_tokens=False)["input_ids"]
    assert len(ids) == 4
    assert tok.decode(ids) == item_tokens(codes)
    # Codes next to ordinary text stay whole too.
    mixed = tok("items " + item_tokens(codes) + ", next", add_special_tokens=False)["input_ids"]
    assert ids == [i for i in mixed if i in set(ids)]

    tok.save_pretrained(tmp_path / "tok")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert len(reloaded) == len(tok)
    assert add_code_tokens(reloaded, 4, 8) == added  # the saved tokens, not new ones
    assert len(reloaded) == len(tok)
