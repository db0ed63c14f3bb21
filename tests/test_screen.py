"""The torch modes of `evalmem.screen` against plain computations: decide's arg-max and gaps, the Levenshtein
rows auto keeps, batching, and verify's hand-off to screen."""

import json
from functools import partial

import numpy as np
import pytest
import torch

from helpers import PREFIX, SUFFIX


def test_levenshtein_rows_and_bound_against_rapidfuzz():
    """Every DP row equals rapidfuzz's distance to each suffix prefix; the bound never exceeds the final
    distance and equals it after the last token."""
    from rapidfuzz.distance import Levenshtein

    from evalmem.screen import levenshtein_step

    rng = np.random.default_rng(0)
    generated, true = rng.integers(0, 3, size=(2, 64, 9))
    dist, span = torch.arange(10).repeat(64, 1), torch.arange(10)
    final = torch.tensor([Levenshtein.distance(list(g), list(t)) for g, t in zip(generated, true)])
    for step in range(9):
        dist = levenshtein_step(dist, torch.from_numpy(generated[:, step]), torch.from_numpy(true), step + 1)
        expected = [[Levenshtein.distance(list(g[:step + 1]), list(t[:j])) for j in range(10)]
                    for g, t in zip(generated, true)]
        assert dist.tolist() == expected
        bound = (dist + (span - step - 1).abs()).min(1).values
        assert (bound <= final).all()
    assert bound.tolist() == final.tolist()


def test_decide_equals_argmax_and_runner_up():
    """decide's shortcuts (one max pass; top-2 and arg-max only where the true token attains the max) give
    torch.argmax's choice (lowest index on exact ties) and the gap to the best other token, on random
    logits with exact ties planted, against a plain per-position computation."""
    from evalmem.screen import decide

    logits = torch.randn(4, 6, 9, generator=torch.Generator().manual_seed(0))
    true = logits.argmax(-1)
    true[1] = torch.randint(0, 9, (6,), generator=torch.Generator().manual_seed(1))  # mostly misses
    logits[2:, :, 0] = logits[2:].amax(-1) + 1
    logits[2:, :, 8] = logits[2:, :, 0]  # tokens 0 and 8 tie for the max: greedy picks 0
    true[2], true[3] = 0, 8  # a hit and a miss by a tie
    hit, gap, true_logit = decide(logits, true)
    for b, j in np.ndindex(*true.shape):
        row, t = logits[b, j], true[b, j]
        others = torch.cat([row[:t], row[t + 1:]])
        assert hit[b, j] == (row.argmax() == t) and true_logit[b, j] == row[t]
        assert torch.isclose(gap[b, j], (row[t] - others.max()).abs()), (b, j)
    assert not hit[3].any() and (gap[2:] == 0).all() and hit[0].all() and not hit[1].all()


@pytest.fixture(scope="module")
def arrays(tiny):
    """The tiny memorizing model (transformers) and its windows as prefix and suffix arrays."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny.model).eval()
    windows = np.array([json.loads(line)["input_ids"][:PREFIX + SUFFIX] for line in open(tiny.data)])
    return model, windows[:, :PREFIX], windows[:, PREFIX:]


def test_batches_run_concurrently_in_order(arrays):
    """screen, verify and auto give the same arrays in batches of 5 (two batches at a time on CPU) as in one
    batch, and leave torch's thread count as it was."""
    from evalmem import screen

    model, prefix, suffix = arrays
    threads = torch.get_num_threads()
    for run in (screen.screen, screen.verify, partial(screen.auto, max_distance=5)):
        whole, batched = run(model, prefix, suffix, len(prefix)), run(model, prefix, suffix, 5)
        assert whole.keys() == batched.keys() and len(whole["match_len"]) == len(prefix) > 10
        for name in whole:
            np.testing.assert_allclose(batched[name], whole[name], atol=1e-4, err_msg=name)
        assert (whole["match_len"] == SUFFIX).any() and (whole["match_len"] < SUFFIX).any()
    assert torch.get_num_threads() == threads


def test_verify_hands_rows_still_matching_to_screen(arrays):
    """verify's rows still matching after `steps` decoding steps, finished by screen, get the match_len and
    near_tie of decoding them to the end, memorized and part-way rows among them."""
    from evalmem import screen

    model, prefix, suffix = arrays
    decoded = screen.verify(model, prefix, suffix, 8, steps=SUFFIX)
    handed = screen.verify(model, prefix, suffix, 8, steps=2)
    assert ((decoded["match_len"] > 2) & (decoded["match_len"] < SUFFIX)).any()
    assert (decoded["match_len"] == SUFFIX).any() and (decoded["match_len"] < 2).any()
    for name in ("match_len", "near_tie"):
        np.testing.assert_array_equal(handed[name], decoded[name], err_msg=name)
