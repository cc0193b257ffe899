"""The statistics of `ctkd-tune validate`, pure Python: Student's t, paired intervals, seeds needed, spikes.

    paired_ci([270.1, 268.4, 271.0], [271.2, 269.9, 271.1])   # PairedDiff(mean=-0.9, low=..., high=..., n=3, sd=...)
    seeds_needed(sd=1.0, difference=1.0)                      # 10 pairs resolve a difference of one paired sd
    has_spike([(10, 300.0), (20, 250.0), (30, 400.0)], total_steps=100)   # True: 400 > 1.5 × 250 after step 10

No SciPy: the t quantile inverts the exact finite-sum CDF for integer degrees of freedom by bisection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Sequence

SPIKE_FACTOR, SPIKE_AFTER = 1.5, 0.10
"""A val/ppl spike: an evaluation > SPIKE_FACTOR × the previous one, after SPIKE_AFTER of the run."""


POWER = 0.80
"""Power `seeds_needed` plans for: the chance that a true difference of the stated size gives an interval
excluding 0."""
MAX_SEEDS = 1000
"""`seeds_needed` gives up above this (None): in practice the difference cannot be resolved."""


@dataclass
class PairedDiff:
    mean: float | None
    low: float | None
    high: float | None
    n: int
    sd: float | None = None  # standard deviation of the per-pair differences (n − 1); None when n < 2


def t_cdf_two_sided(t: float, df: int) -> float:
    """P(|T| ≤ t) for Student's t with integer df (Abramowitz & Stegun 26.7.3-4, exact finite sums)."""
    theta = math.atan(abs(t) / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 0:  # sinθ · (1 + 1/2 cos²θ + 1·3/(2·4) cos⁴θ + ... up to cos^(df-2)θ)
        term = total = 1.0
        for k in range(1, df // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        return s * total
    # 2/π · (θ + sinθ · (cosθ + 2/3 cos³θ + ... up to cos^(df-2)θ)), df odd
    term, total = math.cos(theta), 0.0
    for k in range(1, (df - 1) // 2 + 1):
        total += term
        term *= c2 * (2 * k) / (2 * k + 1)
    return 2 / math.pi * (theta + s * total)


def t_quantile(confidence: float, df: int) -> float:
    """Two-sided critical value t* with P(|T_df| ≤ t*) = confidence, by bisection (t_quantile(0.95, 2) = 4.303)."""
    lo, hi = 0.0, 1e7
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf_two_sided(mid, df) < confidence else (lo, mid)
    return (lo + hi) / 2


def paired_ci(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> PairedDiff:
    """Mean of a − b over pairs, with a t-interval mean ± t*·sd/√n (sd with n − 1); bounds None when n < 2."""
    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    if n == 0:
        return PairedDiff(None, None, None, 0)
    mean = sum(d) / n
    if n < 2:
        return PairedDiff(mean, None, None, 1)
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    half = t_quantile(confidence, n - 1) * sd / math.sqrt(n)
    return PairedDiff(mean, mean - half, mean + half, n, sd)


def seeds_needed(sd: float, difference: float, confidence: float = 0.95, power: float = POWER) -> int | None:
    """Pairs (seeds) a paired t-test needs to resolve a true mean difference `difference` given the paired sd.

    The smallest n ≥ 2 with
        n ≥ ((t_{1−α/2, n−1} + t_{power, n−1}) · sd / difference)²,      α = 1 − confidence,
    where t_{1−α/2, n−1} = t_quantile(confidence, n − 1) is the two-sided critical value of the interval and
    t_{power, n−1} = t_quantile(2·power − 1, n − 1) the one-sided `power` quantile: at that n a true difference of
    `difference` puts the two-sided interval off 0 with probability ≈ `power` (the t-corrected normal approximation
    of the non-central t; for sd = difference it gives 10, where the exact power at n = 10 is 0.803). n grows
    until the inequality holds, from the normal-quantile answer (a lower bound: t quantiles exceed normal ones).
    None above MAX_SEEDS.
    """
    if not difference > 0 or not sd >= 0:
        raise ValueError(f"seeds_needed: difference must be > 0 and sd >= 0, got {difference}, {sd}")
    ratio = (sd / difference) ** 2
    z = NormalDist().inv_cdf
    first = max(2, math.floor((z(0.5 + confidence / 2) + z(power)) ** 2 * ratio))
    for n in range(first, MAX_SEEDS + 1):
        if n >= (t_quantile(confidence, n - 1) + t_quantile(2 * power - 1, n - 1)) ** 2 * ratio:
            return n
    return None


def has_spike(evals: Sequence[tuple[int, float]], total_steps: int, factor: float = SPIKE_FACTOR,
              after: float = SPIKE_AFTER) -> bool:
    """True if an evaluation after `after`·total_steps has val/ppl > factor × the previous evaluation's."""
    evals = sorted(evals)
    return any(step > after * total_steps and ppl > factor * prev
               for (_, prev), (step, ppl) in zip(evals, evals[1:]))
