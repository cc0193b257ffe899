"""Gaps the issue (#19) named, each closed by a test that fails when the behaviour breaks:

- the temperature runaway rule (`run.checks.temperature_runaway`) at the edge of its tail, at both bounds;
- the KD + CE loss against a float64 reference written here from the formulas alone (no ctkd_tune code in it),
  values and gradients w.r.t. the student logits and τ, for every divergence;
- the λ warmup boundary (`core.ctkd.lambda_at`, `get_lambda`) and the search's grace period
  (`search.driver._grace_period`) at realistic run lengths;
- `ctkd-tune distill --resume` under a changed config refused with its one-line message (`check_same_run`).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from fractions import Fraction

import pyarrow.parquet as pq
import pytest
import torch

from ctkd_tune import load_config
from ctkd_tune.config import DIVERGENCES, SCHEDULE_TYPES, ScheduleConfig
from ctkd_tune.core.ctkd import get_lambda, lambda_at
from ctkd_tune.core.losses import kd_loss
from ctkd_tune.run.checks import temperature_runaway

try:  # the step interface (#19 item 2) moves it from the loop into run/step.py, unchanged
    from ctkd_tune.run.step import counted_losses
except ImportError:
    from ctkd_tune.run.loop import counted_losses

IGNORE = -100


# -----------------------------------------------------------------------------
# Temperature runaway: over the last 10% of the run τ stays within runaway_tolerance of the range from one bound

STEPS, TAU_MIN, TAU_MAX = 150, 1.0, 5.0
TAIL_START = STEPS - STEPS // 10  # rows with step > 135 are the tail: 136..150
MARGIN = 0.01 * (TAU_MAX - TAU_MIN)  # checks.runaway_tolerance (default 0.01) of the range


def runaway_config(mode="learnable"):
    return load_config(preset="tiny", overrides=[f"train.steps={STEPS}", f"temperature.mode={mode}",
                                                 f"temperature.tau_min={TAU_MIN}", f"temperature.tau_max={TAU_MAX}",
                                                 "temperature.tau_init=2.0", "checks.runaway_tolerance=0.01"])


def tau_history(at_bound_from: int, at_bound_until: int, bound: float, inside: float):
    """One row per step; τ = `bound` (half a margin inside it) for steps in [from, until], else `inside`."""
    near = bound - MARGIN / 2 if bound == TAU_MAX else bound + MARGIN / 2
    return [{"step": s, "ctkd/temperature": near if at_bound_from <= s <= at_bound_until else inside}
            for s in range(1, STEPS + 1)]


BOUNDS = [pytest.param(TAU_MAX, id="upper"), pytest.param(TAU_MIN, id="lower")]


@pytest.mark.parametrize("mode", ["learnable", "ctkd"])
@pytest.mark.parametrize("bound", BOUNDS)
def test_runaway_fires_when_tau_holds_a_bound_over_the_whole_tail(bound, mode):
    cfg = runaway_config(mode)
    assert temperature_runaway(tau_history(TAIL_START + 1, STEPS, bound, inside=2.5), cfg)  # exactly the tail
    assert temperature_runaway(tau_history(1, STEPS, bound, inside=2.5), cfg)  # the whole run


@pytest.mark.parametrize("bound", BOUNDS)
def test_runaway_does_not_fire_when_tau_touches_a_bound_for_part_of_the_tail(bound):
    cfg = runaway_config()
    partial = {
        "all but the tail's first step": (TAIL_START + 2, STEPS),
        "all but the last step": (1, STEPS - 1),
        "the first half of the tail": (TAIL_START + 1, TAIL_START + 7),
        "the last five steps": (STEPS - 4, STEPS),
        "before the tail only": (1, TAIL_START),
    }
    for what, (start, end) in partial.items():
        assert not temperature_runaway(tau_history(start, end, bound, inside=2.5), cfg), what


@pytest.mark.parametrize("bound", BOUNDS)
def test_runaway_needs_the_tail_within_the_tolerance(bound):
    """Two margins inside the bound is not at it; a tail split between the two bounds is no runaway either."""
    cfg = runaway_config()
    away = bound - 2 * MARGIN if bound == TAU_MAX else bound + 2 * MARGIN
    assert not temperature_runaway([{"step": s, "ctkd/temperature": away} for s in range(1, STEPS + 1)], cfg)
    split = [{"step": s, "ctkd/temperature": TAU_MAX if s % 2 else TAU_MIN} for s in range(1, STEPS + 1)]
    assert not temperature_runaway(split, cfg)


def test_runaway_never_fires_without_a_learned_temperature():
    assert not temperature_runaway(tau_history(1, STEPS, TAU_MAX, inside=2.5), runaway_config("fixed"))


# -----------------------------------------------------------------------------
# KD + CE against a float64 reference written from the formulas (kd_loss's docstring, loop.loss_step's blend):
#     KD = (1/|M|) Σ_{i∈M} τ_i² D(p_i, q_i),  p = softmax(t/τ), q = softmax(s/τ),  M = {labels != -100}
#     CE = (1/|M|) Σ_{i∈M} −log softmax(s_i)[labels_i]
#     loss = kd_weight · KD + ce_weight · CE

def _log_softmax(x):
    return x - torch.logsumexp(x, dim=-1, keepdim=True)


def _kl(log_x, log_y):
    """Σ_v x_v (log x_v − log y_v), per token."""
    return (log_x.exp() * (log_x - log_y)).sum(-1)


def reference_divergence(name, log_p, log_q, alpha, beta):
    if name == "forward_kl":
        return _kl(log_p, log_q)
    if name == "reverse_kl":
        return _kl(log_q, log_p)
    if name == "skew_kl":  # KL(p ‖ α·p + (1−α)·q)
        return _kl(log_p, torch.log(alpha * log_p.exp() + (1 - alpha) * log_q.exp()))
    if name == "jsd":  # β·KL(p ‖ m) + (1−β)·KL(q ‖ m), m = β·p + (1−β)·q
        log_m = torch.log(beta * log_p.exp() + (1 - beta) * log_q.exp())
        return beta * _kl(log_p, log_m) + (1 - beta) * _kl(log_q, log_m)
    raise AssertionError(f"no reference for divergence {name!r}: write one here")


def reference_kd(s, t, tau, labels, divergence, alpha, beta):
    """s, t: (B, T, V) float64; tau: () or (B, T); labels: (B, T) with IGNORE where not counted."""
    tau_col = tau.expand(s.shape[:-1]).unsqueeze(-1)  # (B, T, 1)
    log_p, log_q = _log_softmax(t / tau_col), _log_softmax(s / tau_col)
    per_token = tau_col.squeeze(-1) ** 2 * reference_divergence(divergence, log_p, log_q, alpha, beta)  # (B, T)
    valid = labels != IGNORE
    return per_token[valid].sum() / valid.sum()


def reference_ce(s, labels):
    valid = labels != IGNORE
    picked = _log_softmax(s)[valid].gather(-1, labels[valid].unsqueeze(-1)).squeeze(-1)
    return -picked.mean()


def _logits_and_labels(seed=0, B=3, T=7, V=29):
    g = torch.Generator().manual_seed(seed)
    s = 4.0 * torch.randn(B, T, V, generator=g, dtype=torch.float64)  # realistic spreads: a few nats
    t = s + 3.0 * torch.randn(B, T, V, generator=g, dtype=torch.float64)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, :3] = IGNORE  # a prompt, not counted
    labels[2, 5:] = IGNORE
    return s, t, labels


def _tau(per_token, B=3, T=7):
    g = torch.Generator().manual_seed(7)
    return (1.0 + 3.0 * torch.rand(B, T, generator=g, dtype=torch.float64)) if per_token \
        else torch.tensor(2.3, dtype=torch.float64)


PARAMS = [(0.1, 0.5), (0.3, 0.2)]  # config defaults (skew_alpha, jsd_beta), and others: a swapped α/β shows


@pytest.mark.parametrize("alpha, beta", PARAMS)
@pytest.mark.parametrize("per_token", [False, True], ids=["scalar_tau", "per_token_tau"])
@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_kd_loss_matches_a_float64_reference_written_from_the_formulas(divergence, per_token, alpha, beta):
    s, t, labels = _logits_and_labels()
    tau = _tau(per_token)
    mask = labels != IGNORE

    def value_and_grads(fn):
        s_, tau_ = s.clone().requires_grad_(), tau.clone().requires_grad_()
        loss = fn(s_, tau_)
        return (loss.detach(), *torch.autograd.grad(loss, (s_, tau_)))

    ours = value_and_grads(lambda s_, tau_: kd_loss(s_, t, tau_, mask=mask, chunk_size=4, divergence=divergence,
                                                   alpha=alpha, beta=beta))
    ref = value_and_grads(lambda s_, tau_: reference_kd(s_, t, tau_, labels, divergence, alpha, beta))
    assert ours[0].dtype == torch.float64 and ref[0] > 0.1  # a loss that is not ~0 by accident
    for what, a, b in zip(("value", "d/ds", "d/dτ"), ours, ref):
        assert a.shape == b.shape, what
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12), (what, (a - b).abs().max())
    assert (ours[1][~mask] == 0).all()  # tokens not counted get no gradient


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_the_kd_ce_blend_matches_the_reference(divergence):
    """`counted_losses` (the loop's KD and CE over the counted tokens; CE in float32), blended as loss_step does."""
    cfg = load_config(preset="tiny", overrides=[f"loss.divergence={divergence}", "loss.kd_weight=0.7",
                                                "loss.ce_weight=0.3"])
    lo = cfg.loss
    s, t, labels = _logits_and_labels(seed=3)
    tau = _tau(per_token=False)

    def value_and_grads(fn):
        s_, tau_ = s.clone().requires_grad_(), tau.clone().requires_grad_()
        loss = fn(s_, tau_)
        return (loss.detach(), *torch.autograd.grad(loss, (s_, tau_)))

    def ours_fn(s_, tau_):
        kd, ce = counted_losses(s_, t, labels, tau_, labels != IGNORE, lo.chunk_size, divergence=lo.divergence,
                                alpha=lo.skew_alpha, beta=lo.jsd_beta)
        return lo.kd_weight * kd + lo.ce_weight * ce

    def ref_fn(s_, tau_):
        kd = reference_kd(s_, t, tau_, labels, divergence, lo.skew_alpha, lo.jsd_beta)
        return 0.7 * kd + 0.3 * reference_ce(s_, labels)

    ours, ref = value_and_grads(ours_fn), value_and_grads(ref_fn)
    for what, a, b in zip(("value", "d/ds", "d/dτ"), ours, ref):
        assert torch.allclose(a.double(), b, rtol=1e-5, atol=1e-7), (what, (a.double() - b).abs().max())


# -----------------------------------------------------------------------------
# λ warmup boundary and the search's grace period, at realistic lengths

LENGTHS = [150, 1000, 3000]
WARMUPS = [0.2, 0.4]


@pytest.mark.parametrize("warmup_ratio", WARMUPS)
@pytest.mark.parametrize("steps", LENGTHS)
@pytest.mark.parametrize("schedule", SCHEDULE_TYPES)
def test_lambda_is_exactly_zero_through_the_warmup_and_positive_right_after(schedule, steps, warmup_ratio):
    """0-based steps 0 … W−1 are the warmup (W = int(ratio · steps), exactly ratio · steps here); step W starts
    the ramp at p = 0, where λ is still 0 for every shape but the constant one; from step W + 1 on λ > 0."""
    cfg = ScheduleConfig(schedule, lambda_max=1.0, warmup_ratio=warmup_ratio)
    warmup = cfg.warmup_steps(steps)
    assert warmup == Fraction(str(warmup_ratio)) * steps  # no float truncation at these lengths
    lam = [lambda_at(cfg, i, steps) for i in range(steps)]
    assert all(x == 0.0 for x in lam[:warmup]), [i for i, x in enumerate(lam[:warmup]) if x != 0.0][:5]
    assert lam[warmup] == (1.0 if schedule == "constant" else 0.0)
    assert all(x > 0.0 for x in lam[warmup + 1:]), [i for i, x in enumerate(lam) if i > warmup and x <= 0][:5]
    assert lam[-1] == 1.0


@pytest.mark.parametrize("warmup_ratio", WARMUPS)
@pytest.mark.parametrize("steps", LENGTHS)
def test_get_lambda_is_the_cosine_schedule(steps, warmup_ratio):
    warmup = int(Fraction(str(warmup_ratio)) * steps)
    for i in (0, warmup - 1, warmup, warmup + 1, steps // 2, steps - 1):
        want = lambda_at(ScheduleConfig("cosine", 0.8, warmup_ratio), i, steps)
        assert get_lambda(i, steps, lambda_max=0.8, warmup_ratio=warmup_ratio) == want
    assert get_lambda(warmup - 1, steps, 0.8, warmup_ratio) == 0.0 < get_lambda(warmup + 1, steps, 0.8, warmup_ratio)
    p = 1 / (steps - 1 - warmup)  # the first step past the ramp's start
    assert get_lambda(warmup + 1, steps, 0.8, warmup_ratio) == pytest.approx(0.8 * (1 - math.cos(math.pi * p)) / 2)


@pytest.mark.parametrize("steps", LENGTHS)
def test_the_grace_period_is_past_the_longest_warmup(steps):
    """ASHA's first rung (completed steps) leaves every trial of the space ≥ 5% of the run with λ > 0."""
    pytest.importorskip("ray")
    from ctkd_tune.search.driver import _grace_period

    longest = max(WARMUPS)
    grace = _grace_period(longest, steps)
    assert grace <= steps
    for ratio in (0.0, 0.1, 0.2, 0.29, 0.3, 0.37, longest):  # any warmup up to the space's longest
        for schedule in SCHEDULE_TYPES:
            cfg = ScheduleConfig(schedule, 1.0, ratio)
            first = next(i for i in range(steps) if lambda_at(cfg, i, steps) > 0)  # 0-based
            adversarial_updates = grace - first  # 0-based steps first … grace − 1 are done at the rung
            assert adversarial_updates >= math.ceil(0.05 * steps) - 1, (ratio, schedule, grace, first)
    assert grace - int(Fraction(str(longest)) * steps) >= math.ceil(0.05 * steps)


# -----------------------------------------------------------------------------
# --resume under a changed config: refused, with one line naming the field; the unchanged resume still runs

def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ctkd_tune.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "CTKD_TUNE_DEBUG": ""}, timeout=600)


def test_resume_under_a_changed_config_is_refused_and_the_unchanged_one_runs(tmp_path):
    out = tmp_path / "run"
    same = ("distill", "--preset", "tiny", "--set", "train.steps=4", "--set", "train.checkpoint_every=2",
            "--output", str(out))
    first = run_cli(*same)
    assert first.returncode == 0, first.stderr
    summary = json.loads((out / "summary.json").read_text())
    saved_lr = summary["config"]["train"]["lr"]
    files = {p: p.read_bytes()
             for p in (out / "summary.json", out / "metrics.parquet", out / "checkpoint" / "state.pt")}

    changed = run_cli(*same, "--set", "train.lr=0.0123", "--resume")
    assert changed.returncode == 2, changed.stderr
    lines = changed.stderr.strip().splitlines()
    assert len(lines) == 1, changed.stderr  # one line, no traceback
    assert lines[0] == f"ctkd-tune: error: checkpoint was written with train.lr={saved_lr!r}, this run has 0.0123"
    assert all(p.read_bytes() == before for p, before in files.items())  # the refused resume touched nothing

    again = run_cli(*same, "--resume")
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("completed")
    resumed = json.loads((out / "summary.json").read_text())
    assert resumed["status"] == "completed" and resumed["steps"] == 4
    assert resumed["final_val_ppl"] == pytest.approx(summary["final_val_ppl"])
    assert pq.read_table(out / "metrics.parquet").num_rows == 4
