"""Code token spelling round-trips."""

import pytest

from semconv.codes import all_code_tokens, code_token, code_tokens_in, item_tokens, parse_item_tokens


def test_tokens_round_trip():
    assert code_token(0, 12) == "<a_12>" and code_token(3, 3) == "<d_3>"
    s = item_tokens((12, 7, 201, 3))
    assert s == "<a_12><b_7><c_201><d_3>"
    assert parse_item_tokens(s) == (12, 7, 201, 3)


def test_all_tokens_are_level_major_and_unique():
    toks = all_code_tokens(4, 256)
    assert len(toks) == len(set(toks)) == 1024
    assert toks[0] == "<a_0>" and toks[256] == "<b_0>" and toks[-1] == "<d_255>"


@pytest.mark.parametrize("bad", ["", "<a_1><c_2>", "<b_1>", "x<a_1>", "<a_1> extra"])
def test_malformed_code_strings_are_rejected(bad):
    with pytest.raises(ValueError):
        parse_item_tokens(bad)


def test_code_tokens_in_free_text():
    text = "history <a_12><b_7>, then <a_3><z_40> and <a_12> again; not <A_1> or <a_x>"
    assert code_tokens_in(text) == {(0, 12), (1, 7), (0, 3), (25, 40)}
    assert code_tokens_in("no codes here") == set()
