"""Test helpers shared by the loss and temperature tests: random logits and fresh-leaf gradients."""

import torch


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
