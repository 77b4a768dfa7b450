"""Code token spelling round-trips."""

import pytest

from semconv.codes import all_code_tokens, code_token, code_tokens_in, item_tokens, token_code


def test_tokens_round_trip():
    assert code_token(0, 12) == "<a_12>" and code_token(3, 3) == "<d_3>"
    s = item_tokens((12, 7, 201, 3))
    assert s == "<a_12><b_7><c_201><d_3>"
    assert code_tokens_in(s) == {(0, 12), (1, 7), (2, 201), (3, 3)}


def test_all_tokens_are_level_major_and_unique():
    toks = all_code_tokens(4, 256)
    assert len(toks) == len(set(toks)) == 1024
    assert toks[0] == "<a_0>" and toks[256] == "<b_0>" and toks[-1] == "<d_255>"


def test_code_tokens_in_free_text():
    text = "history <a_12><b_7>, then <a_3><z_40> and <a_12> again; not <A_1> or <a_x>"
    assert code_tokens_in(text) == {(0, 12), (1, 7), (0, 3), (25, 40)}
    assert code_tokens_in("no codes here") == set()


def test_token_code_inverts_code_token_and_rejects_other_text():
    assert token_code(code_token(1, 7)) == (1, 7) and token_code("<z_255>") == (25, 255)
    for bad in ("<b_7><c_1>", "b_7", "<B_7>", "<b_>"):
        with pytest.raises(ValueError, match="not a code token"):
            token_code(bad)


def test_item_codes_artifact_reads_the_same_from_a_run_dir_and_a_local_directory(tmp_path):
    import numpy as np
    import pyarrow as pa

    from semconv.artifacts import RunDir
    from semconv.codes import code_arrays, item_codes_table, read_item_codes

    codes = np.array([[3, 1], [0, 2], [5, 5]])
    table = item_codes_table(np.array([2, 0, 1]), codes)  # the one writer's shape
    assert table.schema.field("codes").type == pa.list_(pa.int16(), 2)
    assert table.schema.field("item_id").type == pa.int64()
    run = RunDir(tmp_path)
    run.write_table("item_codes", table, num_shards=2)
    for ids, got in (read_item_codes(run), read_item_codes(tmp_path / "item_codes")):
        assert ids.tolist() == [2, 0, 1] and got.dtype == np.int64 and got.tolist() == codes.tolist()
    ragged = pa.table({"item_id": [0, 1], "codes": [[1, 2], [3]]})
    with pytest.raises(ValueError, match="different lengths"):
        code_arrays(ragged)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['codes'\]"):
        code_arrays(pa.table({"item_id": [0]}))
