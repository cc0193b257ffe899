"""Tests for ctkd_tune.losses: parity of the chunked ``kd_loss`` with the naive reference (values and gradients
w.r.t. the student logits and τ), gradcheck of its analytic backward in float64, masks, bf16 inputs and bad input.

Run: python -m pytest tests/test_losses.py
"""

import pytest
import torch
import torch.nn.functional as F

from ctkd_tune.losses import kd_loss, kd_loss_reference


def make_logits(*shape, seed=0, dtype=torch.float32):
    """Student logits requiring grad and teacher logits close to them (so the KL is moderate)."""
    g = torch.Generator().manual_seed(seed)
    s = 2.0 * torch.randn(*shape, generator=g)
    t = s + torch.randn(*shape, generator=g)
    return s.to(dtype).requires_grad_(), t.to(dtype)


def loss_and_grads(fn, s, t, tau, **kwargs):
    """Loss value, ∂/∂s and ∂/∂τ (None for a float τ) on fresh leaves."""
    s = s.detach().clone().requires_grad_()
    tau = tau.detach().clone().requires_grad_() if torch.is_tensor(tau) else tau
    loss = fn(s, t, tau, **kwargs)
    loss.backward()
    return loss.detach(), s.grad, tau.grad if torch.is_tensor(tau) else None


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
    from ctkd_tune.losses import forward_kl_chunk
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
