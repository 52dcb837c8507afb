"""Prompt lookup's proposals: the continuation of the latest earlier match of the longest matching tail."""
import random

import torch

import specdec
from specdec import drafters
from specdec.drafters.prompt_lookup import NgramIndex, lookup_continuation
from specdec.sampling import SamplingConfig, seeded_randomness
from scripted import draft_request


def test_latest_match_of_the_longest_tail_wins():
    context = [1, 2, 3, 9, 8, 1, 2, 3, 7, 6, 5, 4, 2, 3]
    # tail (2, 3) appears at 1 and 6: the latest (6) wins and proposes what followed it
    assert lookup_continuation(context, 3, max_ngram=2) == [7, 6, 5]
    # with 3-grams the tail (4, 2, 3) never appeared before: fall back to the 2-gram
    assert lookup_continuation(context, 2, max_ngram=3) == [7, 6]
    # a 1-gram only: the latest earlier 3 is at index 7
    assert lookup_continuation(context, 2, max_ngram=1) == [7, 6]
    assert lookup_continuation([1, 2, 3], 2, max_ngram=3) == []  # no earlier match at all
    assert lookup_continuation([5, 5], 4, max_ngram=3) == [5]  # the match may run into the tail


def test_the_incremental_index_equals_the_scan():
    """Grown token by token, the n-gram index proposes exactly what scanning the context proposes."""
    rng = random.Random(0)
    for trial in range(30):
        tokens = [rng.randrange(6) for _ in range(rng.randrange(1, 80))]
        index = NgramIndex(tokens[:1], max_ngram=3, min_ngram=1)
        for end in range(1, len(tokens) + 1):
            if end > 1:
                index.extend([tokens[end - 1]])
            for k in (1, 4):
                assert index.continuation(k) == lookup_continuation(tokens[:end], k, 3, 1)


def test_the_drafter_proposes_each_rows_continuation_and_follows_commits():
    target = torch.nn.Module()  # prompt lookup never looks at the target
    drafter = drafters.PromptLookup(num_tokens=3, max_ngram=2)
    ids = torch.tensor([[4, 5, 6, 4, 5], [0, 7, 8, 9, 7]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]])
    drafter.start(target, ids, mask, None)
    tree = drafter.propose(draft_request(ids, 3, SamplingConfig(), seeded_randomness(0)))
    assert tree.tokens.tolist() == [[6, 4, 5], [8, 9, 7]]
    assert tree.is_chain and tree.valid is None
    # the target accepts one node of row 0 and none of row 1; new roots 9 and 3
    tree_row = specdec.DraftTree.chain(tree.tokens)
    update = drafters.CommitUpdate(tree_row, True, [[0], []], torch.zeros(2, 2, dtype=torch.long),
                                   torch.ones(2, 2, dtype=torch.bool), torch.zeros(2, 2, 1), torch.tensor([9, 3]))
    drafter.commit(update)
    assert drafter._rows[0].tokens == [4, 5, 6, 4, 5, 6, 9] and drafter._rows[1].tokens == [7, 8, 9, 7, 3]
