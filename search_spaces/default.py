"""The default CTKD search space: the knobs of the plan, as a define-by-run Optuna function.

    ctkd-tune search                                     # uses default_space
    ctkd-tune search --space search_spaces.default:default_space
    ctkd-tune search --space search_spaces.default:curriculum_space    # + the temperature's learning rate
    ctkd-tune search --space search_spaces.default:divergence_space    # + the divergence (and its α / β)

A space only calls `trial.suggest_*`; parameter names are the config's dotted keys, so every suggestion is a
`--set` override of the base config. Dependent ranges keep each sample valid by construction:
    tau_max ≥ tau_min + TAU_MARGIN, and tau_init strictly inside [tau_min, tau_max];
    schedule.gamma exists only for the `exp` schedule (absent params keep the base config's value);
    loss.skew_alpha only for skew_kl, loss.jsd_beta only for jsd.
"""

from __future__ import annotations

from ctkd_tune.search.arms import FALLBACK_C, KNOWN_POINTS, RECOMMENDED  # noqa: F401 (the space's known points)

TAU_MARGIN = 1.0
"""Smallest temperature range: a narrower one leaves the adversary nothing to choose."""
TAU_INIT_INSET = 0.1
"""tau_init keeps this distance from both bounds (a start on a bound is a runaway from step 0)."""


def default_space(trial) -> None:
    """tau bounds and init, λ_max, λ warmup, schedule type (γ only for exp), temperature granularity."""
    tau_min = trial.suggest_float("temperature.tau_min", 0.5, 2.0)
    tau_max = trial.suggest_float("temperature.tau_max", tau_min + TAU_MARGIN, 8.0)
    trial.suggest_float("temperature.tau_init", tau_min + TAU_INIT_INSET, tau_max - TAU_INIT_INSET)
    trial.suggest_float("schedule.lambda_max", 0.05, 2.0, log=True)
    trial.suggest_float("schedule.warmup_ratio", 0.0, 0.4)  # 0.4 = fallback C; ASHA's grace period follows it
    if trial.suggest_categorical("schedule.type", ["cosine", "exp", "linear", "constant"]) == "exp":
        trial.suggest_float("schedule.gamma", 1.0, 20.0, log=True)
    trial.suggest_categorical("temperature.granularity", ["global", "token"])
    return None


def curriculum_space(trial) -> None:
    """The default space plus the temperature's SGD learning rate.

    The temperature moves by lr·λ·∂L/∂θ per step: at the default lr (0.05) and λ ≤ 1 it moves by less than 0.1
    in the default search's 150 steps, so the default space mostly searches the initial temperature. This space
    lets the search find out whether a temperature that actually follows the curriculum does better.
    """
    default_space(trial)
    trial.suggest_float("temperature.lr", 0.01, 2.0, log=True)


def divergence_space(trial) -> None:
    """The default space plus the divergence D in τ²·D: forward_kl | reverse_kl | skew_kl (α) | jsd (β).

    Temperature and divergence interact (arXiv 2606.00306: reverse KL wins at τ = 1, forward KL at higher τ), so
    they are searched jointly. α and β are suggested only for their own divergence.
    """
    default_space(trial)
    divergence = trial.suggest_categorical("loss.divergence", ["forward_kl", "reverse_kl", "skew_kl", "jsd"])
    if divergence == "skew_kl":
        trial.suggest_float("loss.skew_alpha", 0.02, 0.5, log=True)  # DistiLLM uses 0.1; α → 0 is forward KL
    elif divergence == "jsd":
        trial.suggest_float("loss.jsd_beta", 0.1, 0.9)  # GKD tries 0.1, 0.5, 0.9
