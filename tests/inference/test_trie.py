"""CodeTrie: per-level tables that allow exactly the valid code prefixes."""

import numpy as np
import pytest
import torch

from semconv.inference.trie import CodeTrie, CodeTrieError

CODES = [(0, 1, 2), (0, 1, 0), (0, 2, 1), (3, 0, 0)]  # items 0..3


def test_root_allows_only_first_codes_of_items():
    trie = CodeTrie(CODES)
    root = trie.step(0, torch.tensor(0))
    assert (root >= 0).tolist() == [True, False, False, True]


def test_walking_the_tables_reaches_each_item():
    trie = CodeTrie(CODES)
    for item, codes in enumerate(CODES):
        node = torch.tensor(0)
        for level, c in enumerate(codes):
            node = trie.step(level, node)[c]
            assert node >= 0
        assert int(node) == item
        assert trie.item_of(codes) == item


def test_shared_prefixes_share_nodes_and_only_real_children_are_allowed():
    trie = CodeTrie(CODES)
    n0 = trie.step(0, torch.tensor(0))[0]
    n01 = trie.step(1, n0)[1]
    assert (trie.step(2, n01) >= 0).tolist() == [True, False, True]  # (0,1,0) and (0,1,2)
    assert trie.num_nodes(1) == 2 and trie.num_nodes(2) == 3  # prefixes (0,), (3,); (0,1), (0,2), (3,0)


def test_batched_step_gathers_every_node_at_once():
    trie = CodeTrie(CODES)
    nodes = torch.tensor([[0, 1], [1, 0]])
    out = trie.step(1, nodes)
    assert out.shape == (2, 2, 3)
    assert torch.equal(out[0, 1], trie.step(1, torch.tensor(1)))


def test_membership_rejects_invalid_tuples():
    trie = CodeTrie(CODES)
    assert (0, 1, 2) in trie
    assert (0, 1, 1) not in trie and (1, 0, 0) not in trie and (0, 1) not in trie and (9, 0, 0) not in trie
    assert trie.item_of((0, 2, 2)) is None


def test_custom_item_ids_come_out_at_the_last_level():
    trie = CodeTrie(CODES, item_ids=[10, 11, 12, 13])
    assert trie.item_of((3, 0, 0)) == 13 and trie.max_item_id == 13


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


def _node(trie: CodeTrie, prefix) -> int:
    node = 0
    for level, c in enumerate(prefix):
        node = int(trie.children[level][node, c])
    return node


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
