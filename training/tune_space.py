"""What `skipdecode tune` searches and how it chooses (pure Python: no torch, no model).

A target speedup is met on the outputs' own lengths, not over the schedule's window: a row of N
tokens runs ``sum_{t < N} n_t`` layers, so a schedule whose window outlasts the outputs realises
less than its target (E2E outputs end inside a 32-token window: a 3x schedule realises ~2.76x).
The search therefore solves every candidate on held-out lengths: for each shape, window and n_0
it takes the largest ``min_layers`` whose realised speedup still meets the target.

>>> s = Schedule(6, 4, 2, window=3)  # n_t = 4, 3, 2, 2, ...
>>> realised_speedup(s, [1, 4])      # 6 * (1 + 4) / (4 + (4 + 3 + 2 + 2))
2.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

from skipdecode.schedule import Schedule, default_shape

SHAPES = ("static", "linear", "power")
"""Candidate shapes: constant n (static layer dropping), linear decay, power decay."""
PROMPT_DEPTHS = ("trained", "full", "step0")
"""Prompt depths tried: the checkpoint's own, every layer, or step 0's (the least Schedule allows)."""
ROLES = ("candidate", "full", "default")
"""A record is a searched candidate, the full-depth reference, or the schedule ``--speedup S``
solves over the window today (the baseline the search should beat at equal realised speed)."""
EPS = 1e-9


@dataclass(frozen=True)
class TuneConfig:
    target_speedup: float
    """Realised speedup to reach: L / mean layers per generated token on the held-out outputs' own lengths."""
    tolerance: float = 0.15
    """Candidates realise between the target and target * (1 + tolerance) on the held-out references' lengths."""
    shapes: tuple[str, ...] = SHAPES
    """Schedule shapes searched: static, linear, power."""
    windows: tuple[int, ...] = (8, 16, 32, 64)
    """Decay windows (steps) of the linear and power candidates."""
    max_ratios: tuple[float, ...] = (1.25, 1.5)
    """n_0 of the decaying candidates, as multiples of L / target (at most L); the largest min_layers that meets the target is then solved for each."""
    powers: tuple[float, ...] = (2.0,)
    """Exponents of the power candidates (above 1 drops layers sooner)."""
    prompt_depths: tuple[str, ...] = ("trained", "full")
    """Prompt depths tried with every candidate: trained (the checkpoint's own), full (every layer), step0 (n_0 layers: a cheaper prefill the model must have been trained with)."""
    shortfall: float = 0.1
    """A finalist may realise up to this fraction below the target on its own outputs and still be chosen: skip outputs often end sooner than the references, so a decaying schedule solved on the references' lengths realises a little less, and insisting on the exact target picks whatever reaches it however badly it writes (0: the exact target)."""
    proxy_pairs: int = 64
    """Held-out (prompt, reference) pairs of the proxy: teacher-forced dev loss under every candidate."""
    finalists: int = 4
    """Candidates generated and scored (ROUGE-L): the best of each shape by proxy loss, then the next best."""
    eval_mrs: int = 32
    """Held-out prompts (E2E: MRs) generated greedily for each finalist."""
    max_new_tokens: int = 64
    """Length cap of the finalists' generations."""
    batch_size: int = 16
    """Pairs per teacher-forced batch, rows per generation batch."""
    holdout: float = 0.02
    """Without the run's split.json: the fraction of --data's prompt groups held out (the demo trains with 0.02, seed 0)."""
    seed: int = 0
    """Seed of that held-out split."""
    max_length: int = 256
    """Pairs longer than this (prompt + target tokens) are left out of the proxy."""
    progress: bool = True
    """tqdm bars on stderr."""

    def __post_init__(self):
        if not self.target_speedup > 1:
            raise ValueError(f"target speedup must be > 1 (1 is full depth), got {self.target_speedup:g}")
        if self.tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance:g}")
        if not 0 <= self.shortfall < 1:
            raise ValueError(f"shortfall must be in [0, 1), got {self.shortfall:g}")
        for name, values, known in (("shapes", self.shapes, SHAPES), ("prompt depths", self.prompt_depths,
                                                                      PROMPT_DEPTHS)):
            bad = [v for v in values if v not in known]
            if not values or bad:
                raise ValueError(f"{name} must be some of {', '.join(known)}, got {', '.join(values) or 'none'}")
        if min(self.windows, default=0) < 2:
            raise ValueError(f"windows must be >= 2, got {self.windows}")
        if min(self.max_ratios, default=0) <= 1:
            raise ValueError(f"max ratios must be > 1, got {self.max_ratios}")
        if min(self.powers, default=0) <= 0:
            raise ValueError(f"powers must be > 0, got {self.powers}")
        for name in ("proxy_pairs", "finalists", "eval_mrs", "max_new_tokens", "batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', ' ')} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.holdout < 1:
            raise ValueError(f"holdout must be in (0, 1), got {self.holdout:g}")


@dataclass
class Candidate:
    """One schedule and what the search measured of it."""

    schedule: Schedule
    shape: str
    """static, linear or power (full: the reference)."""
    role: str = "candidate"
    """See ROLES."""
    ref_speedup: float = math.nan
    """Realised on the held-out references' lengths (tokenized, with EOS)."""
    proxy_loss: float | None = None
    """Teacher-forced dev loss (token-weighted CE) on the proxy pairs."""
    gen_speedup: float | None = None
    """Realised on the lengths the model generated (finalists and references only)."""
    rouge_l: float | None = None
    bleu: float | None = None
    samples: list[dict] = field(default_factory=list)
    """A few of its generations, for reading."""
    finalist: bool = False
    refined: bool = False
    """Re-solved on the lengths a finalist generated, which fell short of the target."""
    chosen: bool = False

    @property
    def eligible(self) -> bool:
        """May be chosen: any searched or default schedule, never the full-depth reference."""
        return self.role != "full"

    def to_record(self) -> dict:
        return {"shape": self.shape, "role": self.role, "describe": self.schedule.describe(),
                "schedule": self.schedule.to_dict(), "prompt_depth": self.schedule.prompt_depth,
                "ref_speedup": round(self.ref_speedup, 4), "proxy_loss": _round(self.proxy_loss),
                "finalist": self.finalist, "refined": self.refined, "gen_speedup": _round(self.gen_speedup), "rouge_l": _round(self.rouge_l),
                "bleu": _round(self.bleu), "chosen": self.chosen, "samples": self.samples}


def _round(v: float | None, digits: int = 4) -> float | None:
    return None if v is None else round(v, digits)


def realised_speedup(schedule: Schedule, lengths: Sequence[int]) -> float:
    """``L * sum(N_i) / sum_i sum_{t < N_i} n_t``: the layer speedup of rows of these lengths
    (token-weighted, as ``GenerationRun.mean_layers`` counts it)."""
    total = sum(lengths)
    if total < 1 or min(lengths) < 0:
        raise ValueError(f"need lengths >= 0 with a positive sum, got {list(lengths)[:8]}")
    prefix = [0]  # prefix[n]: layers run by a row of n tokens
    for t in range(max(lengths)):
        prefix.append(prefix[-1] + schedule.layers_at(t))
    return schedule.num_layers * total / sum(prefix[n] for n in lengths)


def most_speedup(num_layers: int, warmup_layers: int) -> float:
    """The highest speedup a family allows: every token runs only max(1, warm-up) layers."""
    return num_layers / max(1, warmup_layers)


def prompt_layers_for(depth: str, trained: Schedule) -> int | None:
    """A PROMPT_DEPTHS name as ``Schedule.prompt_layers`` (1 is raised to n_0 by the schedule)."""
    return {"trained": trained.prompt_layers, "full": None, "step0": 1}[depth]


def search_space(trained: Schedule, lengths: Sequence[int], config: TuneConfig) -> list[Candidate]:
    """Every candidate of ``trained``'s family (warm-up layers and drop order kept, so each one's
    layer sets are nested as the checkpoint was trained) that realises between the target and
    target * (1 + tolerance) on ``lengths``: for each shape, window and n_0 the largest min_layers
    meeting the target, under each prompt depth. Raises ValueError when none does."""
    L, w, S = trained.num_layers, trained.warmup_layers, config.target_speedup
    top = most_speedup(L, w)
    if S > top + EPS:
        raise ValueError(f"target speedup {S:g} is above {top:g}, the most {L} layers with {w} warm-up layer(s) "
                         "allow (every token at the warm-up depth)")
    floor = max(1, w)
    family = dict(warmup_layers=w, drop_order=trained.drop_order)
    shapes: list[tuple[str, dict]] = []  # (shape, Schedule fields other than max/min layers)
    for shape in config.shapes:
        if shape == "static":
            shapes.append((shape, dict(window=1)))
        elif shape == "linear":
            shapes += [(shape, dict(window=n, decay="linear")) for n in config.windows]
        else:
            shapes += [(shape, dict(window=n, decay="power", power=p)) for n in config.windows for p in config.powers]
    maxes = sorted({min(L, max(floor + 1, round(L / S * r))) for r in config.max_ratios})
    found: dict[tuple, Candidate] = {}
    for shape, fields in shapes:
        for mx in ([L] if shape == "static" else maxes):
            s = largest_min(Schedule(L, mx, mx, **fields, **family), lengths, S)
            if s is None or (shape != "static" and s.min_layers == s.max_layers):
                continue  # none meets the target, or it is the static candidate again
            speed = realised_speedup(s, lengths)
            if speed > S * (1 + config.tolerance) + EPS:
                continue
            for depth in config.prompt_depths:
                c = replace(s, prompt_layers=prompt_layers_for(depth, trained))
                key = (c.max_layers, c.min_layers, c.window, c.decay, c.power, c.prompt_depth)
                found.setdefault(key, Candidate(c, shape, ref_speedup=speed))
    if not found:
        raise ValueError(f"no {'/'.join(config.shapes)} schedule of this family realises {S:g}x to "
                         f"{S * (1 + config.tolerance):.3g}x on the held-out lengths; raise --tolerance or "
                         "add --windows / --max-ratios")
    return list(found.values())


def largest_min(schedule: Schedule, lengths: Sequence[int], target: float, start: int | None = None
                ) -> Schedule | None:
    """``schedule`` with the largest min_layers, from ``start`` (default its max_layers) down, that
    realises at least ``target`` on ``lengths`` (realised speedup only falls as min_layers grows);
    a static schedule (window 1) moves its max_layers with it. None when even the floor falls short.

    >>> largest_min(Schedule(6, 4, 4, window=3), [5, 5], 2.0).min_layers  # n_t = 4, 3, 2, 2, 2: 2.31x
    2
    """
    static = schedule.window == 1
    for mn in range(schedule.max_layers if start is None else start, max(1, schedule.warmup_layers) - 1, -1):
        s = replace(schedule, max_layers=mn if static else schedule.max_layers, min_layers=mn)
        if realised_speedup(s, lengths) >= target - EPS:
            return s
    return None


def references(trained: Schedule, target: float, lengths: Sequence[int],
               facts: Mapping | None = None) -> list[Candidate]:
    """The full-depth reference and the default: what ``--speedup target`` solves, in the
    checkpoint's family and shape (``default_shape``)."""
    full = Schedule.full(trained.num_layers, **trained.family())
    default = Schedule.for_speedup(trained.num_layers, target, **default_shape(trained, facts), **trained.family())
    shape = "static" if default.min_layers == default.max_layers else default.decay
    return [Candidate(full, "full", "full", realised_speedup(full, lengths)),
            Candidate(default, shape, "default", realised_speedup(default, lengths))]


def pick_finalists(candidates: Sequence[Candidate], k: int) -> list[Candidate]:
    """The ``k`` searched candidates to generate with: the best of each shape by proxy loss first
    (so static dropping and each decay are scored), then the next best; lowest loss first.

    >>> cs = [Candidate(Schedule.constant(6, 3), "static", proxy_loss=2.0),
    ...       Candidate(Schedule(6, 4, 2, 8), "linear", proxy_loss=1.0),
    ...       Candidate(Schedule(6, 5, 2, 8), "linear", proxy_loss=1.5)]
    >>> [c.proxy_loss for c in pick_finalists(cs, 2)]
    [1.0, 2.0]
    """
    ranked = sorted((c for c in candidates if c.role == "candidate" and c.proxy_loss is not None),
                    key=lambda c: c.proxy_loss)
    best: dict[str, Candidate] = {}
    for c in ranked:
        best.setdefault(c.shape, c)
    chosen = list(best.values())[:k]
    chosen += [c for c in ranked if c not in chosen][:k - len(chosen)]
    return sorted(chosen, key=lambda c: c.proxy_loss)


def select(candidates: Sequence[Candidate], target: float, shortfall: float = 0.0) -> tuple[Candidate, str]:
    """The best ROUGE-L among the scored eligible candidates that reach ``target * (1 - shortfall)``
    on the lengths they generated (ties: the lower proxy loss); when none does, among those
    reaching it on the references' lengths. Returns (candidate, which lengths it met the target on).

    >>> a = Candidate(Schedule.constant(6, 3), "static", ref_speedup=2.0, proxy_loss=2.0, gen_speedup=2.0, rouge_l=40.0)
    >>> b = Candidate(Schedule(6, 4, 2, 8), "linear", ref_speedup=2.1, proxy_loss=1.0, gen_speedup=1.9, rouge_l=50.0)
    >>> select([a, b], 2.0)[0] is a, select([a, b], 2.0, shortfall=0.1)[0] is b
    (True, True)
    """
    scored = [c for c in candidates if c.eligible and c.rouge_l is not None]
    floor = target * (1 - shortfall)
    for basis, speed in (("generated", lambda c: c.gen_speedup), ("references", lambda c: c.ref_speedup)):
        meeting = [c for c in scored if speed(c) is not None and speed(c) >= floor - EPS]
        if meeting:
            return max(meeting, key=lambda c: (c.rouge_l, -(c.proxy_loss if c.proxy_loss is not None else math.inf))), basis
    raise ValueError(f"no scored candidate realises {target:g}x")


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both x and y (higher is better), by x.

    >>> pareto_front([(1.0, 60.0), (2.0, 55.0), (2.0, 50.0), (3.0, 56.0)])
    [0, 3]
    """
    front = [i for i, (x, y) in enumerate(points)
             if not any(x2 >= x and y2 >= y and (x2, y2) != (x, y) for x2, y2 in points)]
    return sorted(front, key=lambda i: points[i][0])
