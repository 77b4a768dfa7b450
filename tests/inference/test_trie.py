"""CodeTrie: per-level tables that allow exactly the valid code prefixes."""

import numpy as np
import pytest
import torch

from semconv.inference.trie import CodeTrie, CodeTrieError

CODES = [(0, 1, 2), (0, 1, 0), (0, 2, 1), (3, 0, 0)]  # items 0..3


def _node(trie: CodeTrie, prefix) -> int:
    """The node a code prefix reaches by walking ``children`` (-1: no such prefix); the item id
    after a whole tuple."""
    node = 0
    for level, c in enumerate(prefix):
        node = int(trie.children[level][node, c])
        if node < 0:
            return -1
    return node


def test_root_allows_only_first_codes_of_items():
    trie = CodeTrie(CODES)
    assert (trie.children[0][0] >= 0).tolist() == [True, False, False, True]


def test_walking_the_tables_reaches_each_item():
    trie = CodeTrie(CODES)
    for item, codes in enumerate(CODES):
        assert all(_node(trie, codes[: n + 1]) >= 0 for n in range(len(codes)))
        assert _node(trie, codes) == item


def test_shared_prefixes_share_nodes_and_only_real_children_are_allowed():
    trie = CodeTrie(CODES)
    assert (trie.children[2][_node(trie, (0, 1))] >= 0).tolist() == [True, False, True]  # (0,1,0), (0,1,2)
    # prefixes (0,), (3,) at level 1; (0,1), (0,2), (3,0) at level 2
    assert [len(t) for t in trie.children] == [1, 2, 3]
    assert _node(trie, (0, 1)) != _node(trie, (0, 2))


def test_batched_gathers_read_every_node_at_once():
    trie = CodeTrie(CODES)
    nodes = torch.tensor([[0, 1], [1, 0]])
    out = trie.children[1][nodes]
    assert out.shape == (2, 2, 3)
    assert torch.equal(out[0, 1], trie.children[1][1])


def test_invalid_tuples_reach_no_item():
    trie = CodeTrie(CODES)
    assert _node(trie, (0, 1, 2)) == 0
    assert _node(trie, (0, 1, 1)) == -1 and _node(trie, (1, 0, 0)) == -1 and _node(trie, (0, 2, 2)) == -1


def test_custom_item_ids_come_out_at_the_last_level():
    trie = CodeTrie(CODES, item_ids=[10, 11, 12, 13])
    assert _node(trie, (3, 0, 0)) == 13 and trie.max_item_id == 13


def test_token_ids_map_codes_to_vocabulary():
    ids = [[100, 101, 102, 103], [200, 201, 202], [300, 301, 302]]
    trie = CodeTrie(CODES, token_ids=ids)
    assert trie.token_ids[1].tolist() == [200, 201, 202]
    with pytest.raises(CodeTrieError, match="level 0 uses code 3"):
        CodeTrie(CODES, token_ids=[[100, 101], [200, 201, 202], [300, 301, 302]])


@pytest.mark.parametrize(
    "codes, match",
    [([(0, 1), (0, 1)], "duplicate code tuple"), ([(0, -1)], "negative code in row 0"), ([], "non-empty")],
)
def test_bad_codes_are_rejected_with_the_reason(codes, match):
    with pytest.raises(CodeTrieError, match=match):
        CodeTrie(np.asarray(codes).reshape(len(codes), -1) if codes else np.zeros((0, 2)))


def test_a_node_is_dead_for_a_user_exactly_when_all_its_items_are_excluded():
    trie = CodeTrie(CODES, item_ids=[10, 11, 12, 13])
    exclude = [[10, 11], [13, 99, 13], [12, 11, 10, 10], []]
    dead = trie.dead_nodes(exclude)
    assert len(dead) == 3 and all((np.diff(d) > 0).all() for d in dead)  # sorted, distinct keys
    got = [{(int(k) // trie.next_size(l), int(k) % trie.next_size(l)) for k in d} for l, d in enumerate(dead)]
    assert got[0] == {(1, _node(trie, [3])), (2, _node(trie, [0]))}
    assert got[1] == {(0, _node(trie, [0, 1])), (1, _node(trie, [3, 0])), (2, _node(trie, [0, 1])),
                      (2, _node(trie, [0, 2]))}
    assert got[2] == {(0, 10), (0, 11), (1, 13), (2, 10), (2, 11), (2, 12)}  # the items themselves
    assert trie.leaf_counts[0].tolist() == [3, 1] and trie.paths[3].tolist() == [1, 2, 13]
