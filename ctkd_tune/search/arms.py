"""The known arms of the plan, in one place: the recommended CTKD point and fallbacks A, B and C.

    from ctkd_tune.search.arms import KNOWN_POINTS, FALLBACKS

The search evaluates KNOWN_POINTS first (the default space's `points_to_evaluate`); `validate` runs FALLBACKS next
to the search's best trials. Each arm is a set of dotted-key overrides of a base config.
"""

from __future__ import annotations

RECOMMENDED = {
    "temperature.tau_min": 1.0, "temperature.tau_max": 5.0, "temperature.tau_init": 2.0,
    "schedule.lambda_max": 1.0, "schedule.warmup_ratio": 0.2, "schedule.type": "cosine",
    "temperature.granularity": "global", "temperature.lr": 0.05, "loss.divergence": "forward_kl",
}
"""The plan's recommended configuration; temperature.lr and loss.divergence are the config's defaults, for spaces
that search them (a space keeps only the keys it searches)."""
FALLBACK_C = {**RECOMMENDED, "schedule.lambda_max": 0.5, "schedule.warmup_ratio": 0.4}
"""Fallback C: CTKD with a gentler adversary (half the λ, twice the warmup)."""
KNOWN_POINTS = [RECOMMENDED, FALLBACK_C]
"""Evaluated first by a search whose study is empty (the parts its space searches, when they lie in range)."""

REFERENCE_ARM = "fallback_A"
"""The arm every other is compared with, paired by seed: fixed T = 2, forward KL."""

FALLBACKS = {  # arm: (kind, overrides of the search's base config); the plan's fallbacks are all forward KL
    "fallback_A": ("fallback", {"temperature.mode": "fixed", "temperature.fixed_value": 2.0,
                                "temperature.granularity": "global", "loss.divergence": "forward_kl"}),
    "fallback_B": ("fallback", {"temperature.mode": "anneal", "temperature.anneal_start": 4.0,
                                "temperature.anneal_end": 1.5, "temperature.granularity": "global",
                                "loss.divergence": "forward_kl"}),
    "fallback_C": ("fallback", {"temperature.mode": "ctkd", **FALLBACK_C}),
}
"""The arms `validate` runs next to the search's best: a fixed T = 2, an annealed T 4 → 1.5, and fallback C."""
