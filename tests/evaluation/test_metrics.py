"""Metrics against hand-computed values (no model)."""

import math

import pytest

from skipdecode.evaluation.metrics import corpus_bleu, rouge_l, rouge_l_scores, score


def test_perfect_hypotheses_score_100_with_a_variable_number_of_references():
    refs = [["the cat sat on the mat", "a cat was sitting on the mat"], ["there is a dog in the garden"],
            ["x y", "y z", "the bird sang a very long song today"]]
    hyps = ["a cat was sitting on the mat", "there is a dog in the garden", "the bird sang a very long song today"]
    s = score(hyps, refs)
    assert s.bleu == pytest.approx(100.0)
    assert s.rouge_l == pytest.approx(100.0)
    assert s.rouge_l_per_example == pytest.approx([100.0] * 3)
    assert "nrefs:var" in s.bleu_signature


def test_empty_hypotheses_score_0():
    refs = [["the cat sat on the mat"], ["a dog barked"]]
    s = score(["", "   "], refs)
    assert s.bleu == 0.0 and s.rouge_l == 0.0


def test_bleu_hand_computed_single_and_multi_reference():
    # hyp vs "a b c d f": 1-4 gram precisions 4/5, 3/4, 2/3, 1/2; lengths equal so BP = 1
    expected = 100 * (4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25
    assert corpus_bleu(["a b c d e"], [["a b c d f"]]) == pytest.approx(expected, abs=1e-6)
    # a second reference of the same input matches exactly: grouping must find it
    assert corpus_bleu(["a b c d e"], [["a b c d f", "a b c d e"]]) == pytest.approx(100.0)
    # the same references scored as separate inputs would not
    assert corpus_bleu(["a b c d e", "a b c d e"], [["a b c d f"], ["a b c d e"]]) < 100.0


def test_rouge_l_hand_computed():
    # LCS("the cat sat on the mat", "the cat is on the mat") = "the cat on the mat": 5 of 6 each way
    # LCS("a b c d", "a c e") = "a c": P = 2/4, R = 2/3, F = 2PR / (P + R) = 4/7
    hyps = ["the cat sat on the mat", "a b c d"]
    refs = [["a dog", "the cat is on the mat"], ["a c e"]]
    assert rouge_l_scores(hyps, refs) == pytest.approx([100 * 5 / 6, 100 * 4 / 7])
    assert rouge_l(hyps, refs) == pytest.approx(100 * (5 / 6 + 4 / 7) / 2)


def test_rouge_l_takes_the_best_reference_not_the_mean():
    best = rouge_l(["the cat sat"], [["the cat sat"]])
    with_worse = rouge_l(["the cat sat"], [["completely different words", "the cat sat"]])
    assert best == with_worse == pytest.approx(100.0)


def test_score_strips_whitespace_and_checks_shapes():
    assert score(["  the cat sat on the mat \n"], [["the cat sat on the mat"]]).bleu == pytest.approx(100.0)
    with pytest.raises(ValueError):
        score(["a", "b"], [["a"]])
    with pytest.raises(ValueError):
        score(["a"], [[]])
    assert not math.isnan(score(["a"], [["b"]]).bleu)
