"""Tests for ctkd_tune.core.losses: parity of the chunked ``kd_loss`` with the naive reference (values and gradients
w.r.t. the student logits and τ), gradcheck of its analytic backward in float64, masks, bf16 inputs and bad input.

Run: python -m pytest tests/test_losses.py
"""

import pytest
import torch
import torch.nn.functional as F

from ctkd_tune.core.losses import kd_loss, kd_loss_reference

from logits import loss_and_grads, make_logits  # tests/logits.py


# -----------------------------------------------------------------------------
# KD loss

def naive_kl_div(s, t, T):
    """The formula every KD tutorial uses, for a scalar τ and all tokens valid."""
    return F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), reduction="batchmean", log_target=True) * T**2


@pytest.mark.parametrize("per_token_tau", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("chunk_size", [4, 5, 64])  # 20 tokens: divides, does not divide, one chunk
def test_kd_loss_matches_reference(per_token_tau, masked, chunk_size):
    s, t = make_logits(4, 5, 37)
    g = torch.Generator().manual_seed(1)
    tau = 1.0 + 3.0 * torch.rand(4, 5, generator=g) if per_token_tau else torch.tensor(2.5)
    mask = torch.rand(4, 5, generator=g) > 0.3 if masked else None
    ours = loss_and_grads(kd_loss, s, t, tau, mask=mask, chunk_size=chunk_size)
    ref = loss_and_grads(kd_loss_reference, s, t, tau, mask=mask)
    assert ours[0].shape == () and ours[0].dtype == torch.float32
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), (a, b)
    assert ours[2].shape == tau.shape


def test_kd_loss_equals_naive_kl_div():
    s, t = make_logits(24, 50)
    ours = loss_and_grads(kd_loss, s, t, torch.tensor(2.0), chunk_size=7)
    naive = loss_and_grads(naive_kl_div, s, t, torch.tensor(2.0))
    for a, b in zip(ours, naive):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), (a, b)


def test_kd_loss_gradcheck_float64():
    g = torch.Generator().manual_seed(2)
    s = torch.randn(7, 5, dtype=torch.float64, generator=g, requires_grad=True)
    t = torch.randn(7, 5, dtype=torch.float64, generator=g, requires_grad=True)  # teacher grads are exact too
    mask = torch.tensor([1, 1, 0, 1, 0, 1, 1], dtype=torch.bool)
    for tau in (torch.tensor(1.7, dtype=torch.float64), 1.0 + torch.rand(7, dtype=torch.float64, generator=g)):
        tau.requires_grad_()
        assert torch.autograd.gradcheck(lambda s, t, tau: kd_loss(s, t, tau, mask, chunk_size=3), (s, t, tau))


def test_kd_loss_includes_teacher_entropy_term():
    """True KL, not cross-entropy: identical logits give exactly 0 and no gradient, at any τ."""
    s, _ = make_logits(9, 31)
    for tau in (torch.tensor(1.0), torch.tensor(3.0), torch.linspace(1.0, 5.0, 9)):
        loss, grad_s, grad_tau = loss_and_grads(kd_loss, s, s.detach(), tau, chunk_size=4)
        assert loss.item() == 0.0
        assert grad_s.abs().max().item() < 1e-7 and grad_tau.abs().max().item() < 1e-6


def test_kd_loss_all_masked_is_zero_with_finite_grads():
    s, t = make_logits(2, 3, 11)
    tau = torch.tensor(2.0)
    loss, grad_s, grad_tau = loss_and_grads(kd_loss, s, t, tau, mask=torch.zeros(2, 3, dtype=torch.bool))
    assert loss.item() == 0.0
    assert torch.equal(grad_s, torch.zeros_like(grad_s)) and grad_tau.item() == 0.0
    assert kd_loss_reference(s, t, tau, mask=torch.zeros(2, 3)).item() == 0.0


def test_kd_loss_bf16_inputs():
    s, t = make_logits(3, 4, 29, dtype=torch.bfloat16)
    tau = torch.tensor(2.0)
    loss, grad_s, grad_tau = loss_and_grads(kd_loss, s, t, tau, chunk_size=5)
    assert loss.dtype == torch.float32 and grad_s.dtype == torch.bfloat16 and torch.isfinite(grad_s).all()
    ref = loss_and_grads(kd_loss_reference, s.float(), t.float(), tau)  # same values, upcast up front
    assert torch.allclose(loss, ref[0], rtol=1e-5)
    assert torch.allclose(grad_s.float(), ref[1], rtol=1e-2, atol=1e-5)  # bf16 gradient: rounding only
    assert torch.allclose(grad_tau, ref[2], rtol=1e-4, atol=1e-7)


def test_kd_loss_accepts_float_tau_and_rejects_mismatches():
    s, t = make_logits(6, 10)
    assert torch.allclose(kd_loss(s, t, 2.0), kd_loss_reference(s, t, torch.tensor(2.0)))
    with pytest.raises(ValueError, match="vocabulary"):
        kd_loss(s, torch.randn(6, 11), 2.0)
    with pytest.raises(ValueError, match="tau"):
        kd_loss(s, t, torch.ones(5))
    with pytest.raises(ValueError, match="mask"):
        kd_loss(s, t, 2.0, mask=torch.ones(5))


def test_forward_kl_chunk_gradient_matches_autograd():
    """The kernel's ∂(τ²·KL)/∂s and ∂(τ²·KL)/∂τ per token equal autograd's on the naive formula (float64)."""
    from ctkd_tune.core.losses import forward_kl_chunk
    g = torch.Generator().manual_seed(3)
    s = torch.randn(6, 13, dtype=torch.float64, generator=g, requires_grad=True)
    t = torch.randn(6, 13, dtype=torch.float64, generator=g)
    tau = (1.0 + 2.0 * torch.rand(6, 1, dtype=torch.float64, generator=g)).requires_grad_()
    per_token = tau.squeeze(1) ** 2 * F.kl_div(F.log_softmax(s / tau, -1), F.log_softmax(t / tau, -1),
                                               reduction="none", log_target=True).sum(-1)
    grad_s_ref, grad_tau_ref = torch.autograd.grad(per_token.sum(), (s, tau))
    work = torch.empty(3, 6, 13, dtype=torch.float64)
    grad_s = torch.empty(6, 13, dtype=torch.float64)
    kl, dtau = forward_kl_chunk(s.detach(), t, tau.detach(), work, grad_s=grad_s, need_dtau=True)
    assert torch.allclose(tau.detach().squeeze(1) ** 2 * kl, per_token.detach(), rtol=1e-10)
    assert torch.allclose(grad_s, grad_s_ref, rtol=1e-9, atol=1e-12)
    assert torch.allclose(dtau, grad_tau_ref.squeeze(1), rtol=1e-9, atol=1e-12)


# -----------------------------------------------------------------------------
# Divergences: one contract suite parametrised over every divergence

from ctkd_tune.core.losses import DIVERGENCES, divergence_kernel  # noqa: E402

PARAMS = {"alpha": 0.3, "beta": 0.3}  # away from the defaults, so a parameter that is not passed on shows


def textbook(s, t, tau, divergence, mask=None, alpha=0.3, beta=0.3):
    """The divergences from their definitions on probabilities (float64 autograd), mean over valid tokens."""
    V = s.shape[-1]
    s, t = s.reshape(-1, V).double(), t.reshape(-1, V).double()
    tau = tau.double().reshape(-1, 1) if torch.is_tensor(tau) else tau
    p, q = torch.softmax(t / tau, -1), torch.softmax(s / tau, -1)

    def kl(x, y):
        return (x * (x.log() - y.log())).sum(-1)

    d = {"forward_kl": lambda: kl(p, q), "reverse_kl": lambda: kl(q, p),
         "skew_kl": lambda: kl(p, alpha * p + (1 - alpha) * q),
         "jsd": lambda: beta * kl(p, beta * p + (1 - beta) * q) + (1 - beta) * kl(q, beta * p + (1 - beta) * q),
         }[divergence]()
    w = torch.ones_like(d) if mask is None else mask.reshape(-1).double()
    tau2 = (tau**2).reshape(-1) if torch.is_tensor(tau) else tau**2
    return (w * tau2 * d).sum() / w.sum().clamp(min=1)


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("per_token_tau", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_divergence_matches_float64_textbook(divergence, per_token_tau, masked, dtype):
    """Value, ∂/∂s and ∂/∂τ (scalar or per token, with masks, 5-token chunks over 20 tokens) vs the definitions."""
    s, t = make_logits(4, 5, 37, dtype=dtype)
    g = torch.Generator().manual_seed(1)
    tau = 1.0 + 3.0 * torch.rand(4, 5, generator=g) if per_token_tau else torch.tensor(2.5)
    mask = torch.rand(4, 5, generator=g) > 0.3 if masked else None
    ours = loss_and_grads(kd_loss, s, t, tau.to(dtype), mask=mask, chunk_size=5, divergence=divergence, **PARAMS)
    ref = loss_and_grads(textbook, s.double(), t.double(), tau.double(), divergence=divergence, mask=mask, **PARAMS)
    assert ours[0].dtype == dtype and ours[2].shape == tau.shape
    rtol, atol = (1e-10, 1e-13) if dtype == torch.float64 else (2e-5, 1e-6)
    for a, b in zip(ours, ref):
        assert torch.allclose(a.double(), b, rtol=rtol, atol=atol), (a, b)
    if masked:
        assert (ours[1][~mask] == 0).all() and (per_token_tau is False or (ours[2][~mask] == 0).all())


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_divergence_matches_kd_loss_reference(divergence):
    s, t = make_logits(3, 7, 41)
    tau = torch.linspace(1.0, 4.0, 21)
    ours = loss_and_grads(kd_loss, s, t, tau, chunk_size=8, divergence=divergence, **PARAMS)
    ref = loss_and_grads(kd_loss_reference, s, t, tau, divergence=divergence, **PARAMS)
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, rtol=2e-5, atol=1e-6), (a, b)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_divergence_gradcheck_float64(divergence):
    g = torch.Generator().manual_seed(2)
    s = torch.randn(7, 5, dtype=torch.float64, generator=g, requires_grad=True)
    t = torch.randn(7, 5, dtype=torch.float64, generator=g)
    mask = torch.tensor([1, 1, 0, 1, 0, 1, 1], dtype=torch.bool)
    for tau in (torch.tensor(1.7, dtype=torch.float64), 1.0 + torch.rand(7, dtype=torch.float64, generator=g)):
        tau.requires_grad_()
        assert torch.autograd.gradcheck(
            lambda s, tau: kd_loss(s, t, tau, mask, chunk_size=3, divergence=divergence, **PARAMS), (s, tau))


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("n_work", [3, 4])
def test_kernel_contract(divergence, n_work):
    """Each kernel's per-token D, ∂(τ²D)/∂s and ∂(τ²D)/∂τ equal autograd's on the definition (float64); with
    fewer scratch buffers than it wants it allocates the rest; without need_dtau it returns None."""
    g = torch.Generator().manual_seed(3)
    s = torch.randn(6, 13, dtype=torch.float64, generator=g, requires_grad=True)
    t = torch.randn(6, 13, dtype=torch.float64, generator=g)
    tau = (1.0 + 2.0 * torch.rand(6, 1, dtype=torch.float64, generator=g)).requires_grad_()
    per_token = torch.stack([6 * textbook(s[i], t[i], tau[i], divergence, **PARAMS) / 6 for i in range(6)])
    grad_s_ref, grad_tau_ref = torch.autograd.grad(per_token.sum(), (s, tau))
    kernel = divergence_kernel(divergence, **PARAMS)
    work, grad_s = torch.empty(n_work, 8, 13, dtype=torch.float64), torch.empty(6, 13, dtype=torch.float64)
    d, dtau = kernel(s.detach(), t, tau.detach(), work, grad_s=grad_s, need_dtau=True)
    assert torch.allclose(tau.detach().squeeze(1) ** 2 * d, per_token.detach(), rtol=1e-10)
    assert torch.allclose(grad_s, grad_s_ref, rtol=1e-9, atol=1e-12)
    assert torch.allclose(dtau, grad_tau_ref.squeeze(1), rtol=1e-9, atol=1e-12)
    d2, none = kernel(s.detach(), t, tau.detach(), work)
    assert none is None and torch.equal(d2, d)


def test_reverse_kl_is_forward_kl_with_teacher_and_student_swapped():
    """KL(q ‖ p)(s, t) = KL(p ‖ q)(t, s): values and τ gradients; ∂/∂s of one is ∂/∂t of the other."""
    s, t = make_logits(5, 23)
    tau = torch.linspace(1.0, 3.0, 5).requires_grad_()
    s_ = s.detach().requires_grad_()
    rev = kd_loss(s_, t, tau, chunk_size=2, divergence="reverse_kl")
    grad_s_rev, grad_tau_rev = torch.autograd.grad(rev, (s_, tau))
    t_ = s.detach().clone().requires_grad_()  # the student's logits in the teacher's place
    fwd = kd_loss(t, t_, tau, chunk_size=2)
    grad_t_fwd, grad_tau_fwd = torch.autograd.grad(fwd, (t_, tau))
    assert torch.allclose(rev, fwd, rtol=1e-6)
    assert torch.allclose(grad_s_rev, grad_t_fwd, rtol=1e-5, atol=1e-7)
    assert torch.allclose(grad_tau_rev, grad_tau_fwd, rtol=1e-5, atol=1e-7)


def test_jsd_is_symmetric_at_half_and_tends_to_the_kls_at_the_ends():
    """β = 0.5: swapping teacher and student changes nothing. D/β → KL(p ‖ q) as β → 0 and D/(1−β) → KL(q ‖ p)
    as β → 1 (first order in β), while D itself → 0 at both ends."""
    s, t = make_logits(6, 19, dtype=torch.float64)
    s = s.detach()
    for tau in (torch.tensor(1.0, dtype=torch.float64), torch.tensor(2.5, dtype=torch.float64)):
        tau_a, tau_b = tau.clone().requires_grad_(), tau.clone().requires_grad_()
        a = kd_loss(s, t, tau_a, divergence="jsd", beta=0.5)
        b = kd_loss(t, s, tau_b, divergence="jsd", beta=0.5)
        (ga,), (gb,) = torch.autograd.grad(a, tau_a), torch.autograd.grad(b, tau_b)
        assert torch.allclose(a, b, rtol=1e-12) and torch.allclose(ga, gb, rtol=1e-10)
        fwd, rev = kd_loss(s, t, tau), kd_loss(s, t, tau, divergence="reverse_kl")
        assert not torch.allclose(kd_loss(s, t, tau, divergence="jsd", beta=0.3),
                                  kd_loss(t, s, tau, divergence="jsd", beta=0.3), rtol=1e-3)  # only at 0.5
        for eps in (1e-3, 1e-5):
            assert torch.allclose(kd_loss(s, t, tau, divergence="jsd", beta=eps) / eps, fwd, rtol=20 * eps)
            assert torch.allclose(kd_loss(s, t, tau, divergence="jsd", beta=1 - eps) / eps, rev, rtol=20 * eps)


def test_skew_kl_tends_to_forward_kl_and_to_zero():
    """α → 0: KL(p ‖ q) (first order in α); α → 1: 0. In between it lies strictly between them."""
    s, t = make_logits(6, 19, dtype=torch.float64)
    s = s.detach()
    fwd = kd_loss(s, t, 2.0)
    for eps in (1e-4, 1e-6):
        assert torch.allclose(kd_loss(s, t, 2.0, divergence="skew_kl", alpha=eps), fwd, rtol=50 * eps)
        assert kd_loss(s, t, 2.0, divergence="skew_kl", alpha=1 - eps) < 2 * eps * fwd
    values = [kd_loss(s, t, 2.0, divergence="skew_kl", alpha=a).item() for a in (0.1, 0.3, 0.6, 0.9)]
    assert fwd.item() > values[0] > values[1] > values[2] > values[3] > 0


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_divergence_is_positive_and_zero_iff_the_distributions_match(divergence):
    """> 0 on every token where p ≠ q; 0 (and no gradient) where the logits differ by a constant per row."""
    s, t = make_logits(9, 31)
    g = torch.Generator().manual_seed(4)
    for tau in (torch.tensor(1.0), torch.tensor(3.0), torch.linspace(1.0, 5.0, 9)):
        for i in range(9):  # every token on its own
            one = kd_loss(s[i:i + 1].detach(), t[i:i + 1], tau if tau.ndim == 0 else tau[i:i + 1],
                          divergence=divergence, **PARAMS)
            assert one.item() > 0
        shifted = s.detach() + 5.0 * torch.randn(9, 1, generator=g)  # softmax is shift-invariant per row
        loss, grad_s, grad_tau = loss_and_grads(kd_loss, s, shifted, tau, chunk_size=4, divergence=divergence,
                                                **PARAMS)
        assert abs(loss.item()) < 1e-6
        assert grad_s.abs().max().item() < 1e-6 and grad_tau.abs().max().item() < 1e-5


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_divergence_all_masked_is_zero_with_zero_grads(divergence):
    s, t = make_logits(2, 3, 11)
    for tau in (torch.tensor(2.0), torch.full((2, 3), 2.0)):
        loss, grad_s, grad_tau = loss_and_grads(kd_loss, s, t, tau, mask=torch.zeros(2, 3, dtype=torch.bool),
                                                divergence=divergence, **PARAMS)
        assert loss.item() == 0.0
        assert torch.equal(grad_s, torch.zeros_like(grad_s)) and torch.equal(grad_tau, torch.zeros_like(grad_tau))


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_divergence_bf16_inputs(divergence):
    s, t = make_logits(3, 4, 29, dtype=torch.bfloat16)
    tau = torch.tensor(2.0)
    loss, grad_s, grad_tau = loss_and_grads(kd_loss, s, t, tau, chunk_size=5, divergence=divergence, **PARAMS)
    assert loss.dtype == torch.float32 and grad_s.dtype == torch.bfloat16 and torch.isfinite(grad_s).all()
    ref = loss_and_grads(textbook, s.double(), t.double(), tau.double(), divergence=divergence, **PARAMS)
    assert torch.allclose(loss.double(), ref[0], rtol=1e-5)
    assert torch.allclose(grad_s.double(), ref[1], rtol=1e-2, atol=1e-5)  # bf16 gradient: rounding only
    assert torch.allclose(grad_tau.double(), ref[2], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    ({"divergence": "kl"}, "unknown divergence 'kl'"),
    ({"divergence": "skew_kl", "alpha": 0.0}, "alpha must be in \\(0, 1\\), got 0.0"),
    ({"divergence": "skew_kl", "alpha": 1.0}, "alpha"),
    ({"divergence": "jsd", "beta": 1.5}, "beta must be in \\(0, 1\\), got 1.5"),
    ({"divergence": "jsd", "beta": -0.1}, "beta"),
])
def test_divergence_bad_input_names_it(kwargs, match):
    s, t = make_logits(2, 5)
    for fn in (kd_loss, kd_loss_reference):
        with pytest.raises(ValueError, match=match):
            fn(s, t, 2.0, **kwargs)


@pytest.mark.parametrize("divergence", ["reverse_kl", "skew_kl", "jsd"])
def test_teacher_gradient_only_for_forward_kl(divergence):
    s, t = make_logits(2, 5)
    with pytest.raises(ValueError, match=f"{divergence}.*teacher"):
        kd_loss(s, t.requires_grad_(), 2.0, divergence=divergence)
    with torch.no_grad():  # no graph, no problem
        assert kd_loss(s, t, 2.0, divergence=divergence) > 0
