"""Tests for ctkd_tune.core.ctkd: gradient reversal, learnable temperatures, and λ schedules.

Run: python -m pytest tests/test_ctkd.py

Property tests of the math (GRL sign, sigmoid bounds, gradient direction of τ) and one contract suite
parametrised over every λ schedule.
"""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ctkd_tune.core.ctkd import (
    LAMBDA_SCHEDULES,
    CTKDTemperature,
    CTKDTemperaturePredictor,
    GradientReversalFunction,
    GradientReversalLayer,
    get_lambda,
    get_lambda_exp,
    lambda_at,
    token_features,
)
from ctkd_tune.config import ScheduleConfig
from ctkd_tune.core.losses import kd_loss

from logits import make_logits  # tests/logits.py


# -----------------------------------------------------------------------------
# Gradient reversal

@pytest.mark.parametrize("lambda_", [1.0, 0.5, 0.0, -1.0])
def test_grl_scales_gradient_by_minus_lambda(lambda_):
    x = torch.tensor(3.0, requires_grad=True)
    y = GradientReversalFunction.apply(x, lambda_)
    y.backward()
    assert y.item() == 3.0
    assert x.grad.item() == -lambda_


def test_grl_layer_set_lambda_and_override():
    layer = GradientReversalLayer()
    layer.set_lambda(0.5)
    x = torch.ones(3, requires_grad=True)
    layer(x).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), -0.5))
    x.grad = None
    layer(x, lambda_=2.0).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), -2.0))


def test_grl_returns_float32_copy_for_bf16():
    x = torch.tensor([1.5, -2.0], dtype=torch.bfloat16, requires_grad=True)
    y = GradientReversalFunction.apply(x, 1.0)
    assert y.dtype == torch.float32
    y.sum().backward()
    assert x.grad.dtype == torch.bfloat16 and torch.equal(x.grad.float(), torch.tensor([-1.0, -1.0]))
    x32 = torch.ones(2, requires_grad=True)
    assert GradientReversalFunction.apply(x32, 1.0).data_ptr() != x32.data_ptr()  # a copy, not a view


# -----------------------------------------------------------------------------
# Temperatures

def test_temperature_init_and_bounds():
    temp = CTKDTemperature(1.0, 5.0, 2.0)
    assert temp.raw_temp.shape == () and temp.raw_temp.dtype == torch.float32
    assert temp.get_temperature() == pytest.approx(2.0, abs=1e-6)
    tau = temp(0.3)
    assert tau.shape == () and tau.dtype == torch.float32 and tau.item() == pytest.approx(2.0, abs=1e-6)
    with torch.no_grad():
        temp.raw_temp.fill_(-100.0)
    assert 1.0 <= temp.get_temperature() <= 1.01
    with torch.no_grad():
        temp.raw_temp.fill_(100.0)
    assert 4.99 <= temp.get_temperature() <= 5.0


@pytest.mark.parametrize("kwargs, name", [
    (dict(tau_min=1.0, tau_max=5.0, init=1.0), "init"),
    (dict(tau_min=1.0, tau_max=5.0, init=5.0), "init"),
    (dict(tau_min=3.0, tau_max=2.0, init=2.5), "tau_max"),
    (dict(tau_min=0.0, tau_max=2.0, init=1.0), "tau_min"),
])
def test_temperature_rejects_bad_bounds(kwargs, name):
    with pytest.raises(ValueError, match=name):
        CTKDTemperature(**kwargs)
    with pytest.raises(ValueError, match=name):
        CTKDTemperaturePredictor(4, **kwargs)


def test_temperature_gradient_is_reversed_and_scaled():
    s, t = make_logits(6, 11)
    grads = {}
    for lambda_ in (-1.0, 1.0, 0.5, 0.0):  # −1 = plain minimisation (the "learnable" ablation)
        temp = CTKDTemperature(1.0, 5.0, 2.0)
        kd_loss(s, t, temp(lambda_)).backward()
        grads[lambda_] = temp.raw_temp.grad.item()
    assert grads[-1.0] != 0.0
    assert grads[1.0] == pytest.approx(-grads[-1.0], rel=1e-6)
    assert grads[0.5] == pytest.approx(-0.5 * grads[-1.0], rel=1e-6)
    assert grads[0.0] == 0.0


def test_predictor_starts_at_init_and_is_bounded():
    s, t = make_logits(2, 5, 13)
    feats = token_features(s, t)
    pred = CTKDTemperaturePredictor(input_dim=4, tau_min=1.0, tau_max=5.0, init=2.0)
    tau = pred(feats, 1.0)
    assert tau.shape == (10,) and tau.dtype == torch.float32
    assert torch.allclose(tau, torch.full((10,), 2.0), atol=1e-5)
    with torch.no_grad():
        pred.mlp[-1].bias.fill_(1e4)
    assert torch.all(pred(feats, 1.0) <= 5.0) and torch.all(pred(feats, 1.0) >= 4.99)


def test_token_features_match_definitions():
    s, t = make_logits(3, 4, 17, dtype=torch.bfloat16)
    feats = token_features(s, t, chunk_size=5)  # 12 tokens, chunks of 5, 5, 2
    assert feats.shape == (12, 4) and feats.dtype == torch.float32 and not feats.requires_grad
    s32, t32 = s.detach().float().reshape(12, 17), t.float().reshape(12, 17)
    entropy = lambda x: -(F.softmax(x, -1) * F.log_softmax(x, -1)).sum(-1)
    expected = torch.stack([entropy(t32), entropy(s32), t32.amax(-1), s32.amax(-1)], dim=-1)
    assert torch.allclose(feats, expected, atol=1e-5)


def test_predictor_reversed_gradient_does_not_reach_student():
    torch.manual_seed(0)
    V = 13
    student = nn.Sequential(nn.Embedding(V, 8), nn.Linear(8, V))
    tokens = torch.randint(0, V, (2, 6))
    teacher_logits = 3.0 * torch.randn(2, 6, V)
    pred = CTKDTemperaturePredictor(input_dim=5, init=2.0)
    with torch.no_grad():
        pred.mlp[-1].weight.normal_()  # make τ depend on the features

    def student_grads(detach_tau):
        student.zero_grad()
        pred.zero_grad()
        logits = student(tokens)  # (B, T, V)
        hidden = student[0](tokens).mean(-1, keepdim=True)  # a feature that carries the student's graph
        feats = torch.cat([token_features(logits, teacher_logits), hidden.reshape(-1, 1)], dim=-1)
        assert feats.requires_grad
        tau = pred(feats, lambda_=1.0)  # (B·T,)
        kd_loss(logits, teacher_logits, tau.detach() if detach_tau else tau).backward()
        return [p.grad.clone() for p in student.parameters()]

    with_tau = student_grads(detach_tau=False)
    assert pred.mlp[0].weight.grad is not None and pred.mlp[0].weight.grad.abs().sum() > 0
    for g, g_ref in zip(with_tau, student_grads(detach_tau=True)):
        assert torch.equal(g, g_ref)


# -----------------------------------------------------------------------------
# λ schedules

def test_cosine_schedule_values():
    assert get_lambda(0, 3000) == 0.0
    assert get_lambda(599, 3000) == 0.0
    assert 0.0 < get_lambda(1500, 3000) < get_lambda(2999, 3000) <= 1.0
    assert get_lambda(2999, 3000) == 1.0
    assert get_lambda(1800, 3000, lambda_max=0.5) == pytest.approx(0.25, abs=1e-3)  # halfway after warmup


@pytest.mark.parametrize("schedule", sorted(LAMBDA_SCHEDULES))
@pytest.mark.parametrize("total_steps, warmup_ratio, lambda_max", [
    (3000, 0.2, 1.0), (100, 0.0, 0.5), (7, 0.5, 2.0), (1, 0.0, 1.0), (2, 0.9, 1.0),
])
def test_schedule_contract(schedule, total_steps, warmup_ratio, lambda_max):
    cfg = ScheduleConfig(type=schedule, lambda_max=lambda_max, warmup_ratio=warmup_ratio)
    values = [lambda_at(cfg, step, total_steps) for step in range(total_steps)]
    warmup_steps = int(warmup_ratio * total_steps)
    assert all(isinstance(v, float) and 0.0 <= v <= lambda_max for v in values)
    assert all(v == 0.0 for v in values[:warmup_steps])
    assert values[-1] == pytest.approx(lambda_max, abs=1e-6)
    assert all(b >= a for a, b in zip(values, values[1:]))
    if schedule != "constant" and total_steps - warmup_steps > 1:  # the rise starts from 0 after warmup
        assert values[warmup_steps] == 0.0


@pytest.mark.parametrize("schedule", sorted(LAMBDA_SCHEDULES))
def test_lambda_at_dispatches_to_the_named_schedule(schedule):
    cfg = ScheduleConfig(type=schedule, lambda_max=0.5, warmup_ratio=0.1)
    shape = LAMBDA_SCHEDULES[schedule]
    assert 0.5 * shape((50 - 10) / (100 - 1 - 10), cfg) == lambda_at(cfg, 50, 100)


def test_exp_schedule_is_normalised_dann():
    dann = lambda p: 2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0
    cfg = ScheduleConfig(type="exp", lambda_max=1.0, warmup_ratio=0.0, gamma=10.0)
    assert lambda_at(cfg, 50, 101) == pytest.approx(dann(0.5) / dann(1.0), rel=1e-12)
    assert lambda_at(cfg, 100, 101) == 1.0
    assert get_lambda_exp(50, 101) == lambda_at(cfg, 50, 101)


@pytest.mark.parametrize("kwargs, match", [
    (dict(type="sigmoid"), "cosine"),
    (dict(warmup_ratio=1.0), "warmup_ratio"),
    (dict(warmup_ratio=-0.1), "warmup_ratio"),
    (dict(total_steps=0), "total_steps"),
    (dict(lambda_max=-1.0), "lambda_max"),
    (dict(type="exp", gamma=0.0), "gamma"),
])
def test_lambda_at_rejects_bad_arguments(kwargs, match):
    total_steps = kwargs.pop("total_steps", 10)
    schedule = ScheduleConfig(**(dict(type="cosine", lambda_max=1.0, warmup_ratio=0.2) | kwargs))
    with pytest.raises(ValueError, match=match):
        lambda_at(schedule, 9, total_steps)
