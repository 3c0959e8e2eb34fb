"""Quality metrics of generated text against several references per input (E2E style).

E2E has several human references for each meaning representation (MR): a hypothesis is scored
against all of its MR's references at once, never against each row separately (skipdecode/data.py
``group_examples`` gathers them).

- BLEU: sacrebleu's multi-reference corpus BLEU (13a tokenization, case-sensitive); inputs with
  fewer references are padded with ``None``, which sacrebleu skips.
- ROUGE-L: rouge-score's F-measure (its default tokenizer: lowercase, alphanumeric tokens, no
  stemming), the best over a hypothesis' references, then averaged over hypotheses, as the E2E
  challenge's scripts do.
- METEOR is not computed: nltk's implementation needs the WordNet corpus, a separate download
  that this project may not assume (offline machines, CI), and no other well-kept library
  provides it without one.

Scores are on a 0-100 scale.

>>> round(rouge_l(["the cat sat on the mat"], [["the cat is on the mat", "a dog"]]), 2)
83.33
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

METEOR_NOTE = ("not computed: nltk's METEOR needs the WordNet corpus download, which offline "
               "machines and CI lack")


def _check(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference groups")
    if not hypotheses:
        raise ValueError("nothing to score: no hypotheses")
    for i, refs in enumerate(references):
        if isinstance(refs, str) or not refs:
            raise ValueError(f"reference group {i} must be a non-empty list of strings")


def _bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]]):
    from sacrebleu.metrics import BLEU

    _check(hypotheses, references)
    width = max(len(r) for r in references)
    streams = [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]
    metric = BLEU()
    return metric.corpus_score(list(hypotheses), streams), metric


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Multi-reference corpus BLEU; ``references[i]`` are all references of hypothesis i."""
    return float(_bleu(hypotheses, references)[0].score)


def rouge_l_scores(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> list[float]:
    """Per hypothesis: the best ROUGE-L F-measure (0-100) over its references."""
    from rouge_score import rouge_scorer

    _check(hypotheses, references)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return [100.0 * max(scorer.score(ref, hyp)["rougeL"].fmeasure for ref in refs)
            for hyp, refs in zip(hypotheses, references)]


def rouge_l(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean over hypotheses of the best ROUGE-L F over each one's references (0-100)."""
    scores = rouge_l_scores(hypotheses, references)
    return sum(scores) / len(scores)


@dataclass(frozen=True)
class Scores:
    bleu: float
    rouge_l: float
    rouge_l_per_example: list[float]
    bleu_signature: str
    """sacrebleu's signature (tokenizer, case, number of references): makes BLEU reproducible."""
    meteor: float | None = None
    meteor_note: str = METEOR_NOTE

    def summary(self) -> dict:
        return {"bleu": round(self.bleu, 2), "rouge_l": round(self.rouge_l, 2), "meteor": self.meteor,
                "meteor_note": self.meteor_note, "bleu_signature": self.bleu_signature}


def score(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> Scores:
    """All metrics at once; hypotheses are stripped of surrounding whitespace first."""
    hyps = [h.strip() for h in hypotheses]
    result, metric = _bleu(hyps, references)
    per = rouge_l_scores(hyps, references)
    return Scores(float(result.score), sum(per) / len(per), per, str(metric.get_signature()))
