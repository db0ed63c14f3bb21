"""Extraction metrics on hand-made cases."""

import numpy as np
import pytest

from evalmem.extraction import edit_distances, match_lengths, metrics


def arr(*rows):
    return np.array(rows, dtype=np.int64)


def test_match_len_is_longest_common_prefix():
    suffix = arr([1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4])
    generated = arr([1, 2, 3, 4], [9, 2, 3, 4], [1, 2, 9, 4], [1, 2, 3, 9])
    assert match_lengths(generated, suffix).tolist() == [4, 0, 2, 3]


def test_token_accuracy_counts_positions_not_prefix():
    m = metrics(arr([1, 9, 3, 9]), arr([1, 2, 3, 4]))
    assert m["token_accuracy"].tolist() == [0.5]
    assert m["match_len"].tolist() == [1]
    assert m["exact_match"].tolist() == [False]


def test_edit_distance_is_levenshtein_over_suffix_length():
    suffix = arr([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    # one substitution, one shift (deletion + insertion = 2 edits), identical, all different
    generated = arr([1, 2, 3, 4, 5, 6, 7, 8, 9, 0],
                    [2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
                    [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
                    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    suffix = np.repeat(suffix, 4, axis=0)
    assert edit_distances(generated, suffix).tolist() == pytest.approx([0.1, 0.2, 0.0, 1.0])
    m = metrics(generated, suffix)
    assert m["approx_match"].tolist() == [True, False, True, False]
    assert m["exact_match"].tolist() == [False, False, True, False]
    # a shifted copy has low token accuracy but small edit distance: the two metrics differ on purpose
    assert m["token_accuracy"].tolist() == [0.9, 0.0, 1.0, 0.0]
