"""Per-chunk kernels of the divergences other than forward KL, with the contract of ``losses.forward_kl_chunk``.

Every kernel takes (s, t, tau, work, grad_s=None, need_dtau=False, **params) and returns (D, dtau) per token:
    p = softmax(t/τ) (teacher), q = softmax(s/τ) (student), a = log p, b = log q   (n, V) each
    D          (n,)  the divergence, not yet τ²-scaled
    dtau       (n,)  ∂(τ²·D)/∂τ, only when need_dtau (else None)
    grad_s     (n, V) if given, receives ∂(τ²·D)/∂s

    reverse_kl   D = KL(q ‖ p)                                          (MiniLLM's objective)
    skew_kl      D = KL(p ‖ m),  m = α·p + (1−α)·q,  α ∈ (0, 1)         (DistiLLM's skew forward KL)
    jsd          D = β·KL(p ‖ m) + (1−β)·KL(q ‖ m),  m = β·p + (1−β)·q,  β ∈ (0, 1)   (GKD's generalised JSD)

All are true divergences (DistiLLM's code drops the constant Σ p log p; here it stays, because it depends on τ).
log m is a log-sum-exp of a + log α and b + log(1−α), never the log of a sum of probabilities.

The gradients come from D's partial derivatives g = ∂D/∂q, h = ∂D/∂p (elementwise, p and q taken as free):
    ∂(τ²D)/∂s = τ · q ⊙ (g − E_q[g])
    ∂(τ²D)/∂τ = τ · (2·D − Cov_q(g, b) − Cov_p(h, a))
the second by homogeneity (τ²D is 2-homogeneous in (s, t, τ)), as in forward_kl_chunk. Per divergence:
    reverse_kl   g = b − a + 1            h = −q/p
    skew_kl      g = −(1−α)·p/m           h = a − log m + 1 − α·p/m
    jsd          g = (1−β)·(b − log m)    h = β·(a − log m)
Covariances are Σ f·g·x − E f·E x with torch's pairwise sums, like forward_kl_chunk.

``work`` is (k, ≥n, V) scratch in the compute dtype; reverse_kl needs k = 3, skew_kl and jsd 4 (``WORK_BUFFERS``).
Given fewer, a kernel allocates the missing buffers per call (correct, but fresh allocations are slow on CPU).
"""

import math

import torch

WORK_BUFFERS = {"reverse_kl": 3, "skew_kl": 4, "jsd": 4}


def _views(work: torch.Tensor, n: int, k: int) -> list[torch.Tensor]:
    """k (n, V) scratch views of ``work``, allocating those it lacks."""
    views = list(work[:k, :n])
    views += [torch.empty_like(work[0, :n]) for _ in range(k - len(views))]
    return views


def _log_softmaxes(s, t, tau, a, b, tmp):
    """a ← log_softmax(t/τ), b ← log_softmax(s/τ), using tmp for the division."""
    torch.log_softmax(torch.div(t, tau, out=tmp), dim=-1, out=a)
    torch.log_softmax(torch.div(s, tau, out=tmp), dim=-1, out=b)


def _expect_log(x, tmp):
    """E_x[log x] per row, from log x: Σ exp(log x) · log x."""
    return torch.exp(x, out=tmp).mul_(x).sum(-1)


def reverse_kl_chunk(s, t, tau, work, grad_s=None, need_dtau=False):
    """Reverse KL, KL(q ‖ p) = Σ q (b − a), and its τ²-scaled gradients (see the module docstring).

        ∂(τ²D)/∂s = τ · q ⊙ (d − D),  d = b − a
        ∂(τ²D)/∂τ = τ · (2D − Cov_q(d, b) − (E_p[a] − E_q[a])),  E_q[a] = E_q[b] − D
    Exactly forward_kl_chunk with teacher and student swapped (its value and τ gradient; tested).
    """
    a, b, tmp = _views(work, s.shape[0], 3)
    _log_softmaxes(s, t, tau, a, b, tmp)
    if need_dtau:
        e_a, e_b = _expect_log(a, tmp), _expect_log(b, tmp)  # (n,) E_p[a], E_q[b]
    qd = torch.sub(b, a, out=a).mul_(torch.exp(b, out=tmp))  # q ⊙ d, in place of a
    kl = qd.sum(-1)  # (n,)
    if grad_s is not None:  # τ · (q ⊙ d − D · q)
        torch.mul(tmp, -kl[:, None], out=grad_s).add_(qd).mul_(tau)
    if not need_dtau:
        return kl, None
    cov_q = qd.mul_(b).sum(-1) - kl * e_b  # Cov_q(d, b)
    return kl, tau.squeeze(1) * (2 * kl - cov_q - (e_a - (e_b - kl)))


def _mixture(s, t, tau, work, weight: float, need_dtau: bool):
    """The opening skew KL and JSD share: log p (a) and log q (b) at τ, log m = log(w·p + (1−w)·q) for w = `weight`,
    and E_p[a], E_q[b] when the τ gradient is needed (else None); `tmp` is free scratch afterwards."""
    a, b, logm, tmp = _views(work, s.shape[0], 4)
    _log_softmaxes(s, t, tau, a, b, tmp)
    e_a = e_b = None
    if need_dtau:
        e_a, e_b = _expect_log(a, tmp), _expect_log(b, tmp)  # (n,)
    torch.add(a, math.log(weight), out=tmp)
    torch.logaddexp(tmp, torch.add(b, math.log1p(-weight), out=logm), out=logm)
    return a, b, logm, tmp, e_a, e_b


def skew_kl_chunk(s, t, tau, work, grad_s=None, need_dtau=False, alpha=0.1):
    """DistiLLM's skew forward KL, KL(p ‖ m) with m = α·p + (1−α)·q, and its τ²-scaled gradients.

    With e = a − log m, r = p/m = exp(e) ≤ 1/α and w = (1−α)·q ⊙ r = p ⊙ (1 − α·r), W = Σ w:
        D          = Σ p e
        ∂(τ²D)/∂s  = τ · (W·q − w)
        ∂(τ²D)/∂τ  = τ · (2D + (Σ w b − W·E_q[b]) − (Σ p(e − α r) a − (D − α Σ p r)·E_p[a]))
    α → 0 gives forward KL, α → 1 gives 0.
    """
    a, b, logm, tmp, e_a, e_b = _mixture(s, t, tau, work, alpha, need_dtau)  # log p, log q, log m
    e = torch.sub(a, logm, out=logm)  # log p − log m, in place of log m
    pe = torch.exp(a, out=tmp).mul_(e)  # p ⊙ e
    kl = pe.sum(-1)  # (n,)
    if need_dtau:
        s_pea = pe.mul_(a).sum(-1)  # Σ p e a
    pr = e.add_(a).exp_()  # p ⊙ r = exp(a + e), in place of e
    if need_dtau:
        s_pr, s_pra = pr.sum(-1), torch.mul(pr, a, out=tmp).sum(-1)  # Σ p r, Σ p r a
    w = torch.exp(a, out=tmp).add_(pr, alpha=-alpha)  # p − α p r
    w_sum = w.sum(-1)  # (n,)
    if grad_s is not None:
        torch.exp(b, out=grad_s).mul_(w_sum[:, None]).sub_(w).mul_(tau)
    if not need_dtau:
        return kl, None
    cov_q = w.mul_(b).sum(-1) - w_sum * e_b  # −Cov_q(g, b)
    cov_p = s_pea - alpha * s_pra - (kl - alpha * s_pr) * e_a  # Cov_p(h, a)
    return kl, tau.squeeze(1) * (2 * kl + cov_q - cov_p)


def jsd_chunk(s, t, tau, work, grad_s=None, need_dtau=False, beta=0.5):
    """GKD's generalised Jensen-Shannon divergence and its τ²-scaled gradients (TRL's GKDTrainer convention).

    With m = β·p + (1−β)·q, e_p = a − log m, e_q = b − log m, K_p = KL(p ‖ m) = Σ p e_p, K_q = KL(q ‖ m):
        D          = β·K_p + (1−β)·K_q
        ∂(τ²D)/∂s  = τ · (1−β) · q ⊙ (e_q − K_q)
        ∂(τ²D)/∂τ  = τ · (2D − (1−β)·Cov_q(e_q, b) − β·Cov_p(e_p, a))
    Symmetric at β = 0.5 (swapping teacher and student); D/β → forward KL as β → 0, D/(1−β) → reverse KL as
    β → 1 (D itself → 0 at both ends: TRL special-cases β = 0 and 1 as those KLs).
    """
    a, b, logm, tmp, e_a, e_b = _mixture(s, t, tau, work, beta, need_dtau)  # log p, log q, log m
    # teacher side: p ⊙ e_p in place of a; a is rebuilt as e_p + log m (one rounding) for Σ p e_p a
    e_p = torch.sub(a, logm, out=tmp)
    pe = a.exp_().mul_(e_p)
    k_p = pe.sum(-1)  # (n,)
    if need_dtau:
        cov_p = pe.mul_(e_p.add_(logm)).sum(-1) - k_p * e_a  # Cov_p(e_p, a)
    # student side
    e_q = torch.sub(b, logm, out=a)
    qe = torch.exp(b, out=tmp).mul_(e_q)  # q ⊙ e_q
    k_q = qe.sum(-1)  # (n,)
    if grad_s is not None:  # τ (1−β) (q ⊙ e_q − K_q q)
        torch.exp(b, out=grad_s).mul_(-k_q[:, None]).add_(qe).mul_(tau * (1 - beta))
    kl = beta * k_p + (1 - beta) * k_q
    if not need_dtau:
        return kl, None
    cov_q = qe.mul_(b).sum(-1) - k_q * e_b  # Cov_q(e_q, b)
    return kl, tau.squeeze(1) * (2 * kl - (1 - beta) * cov_q - beta * cov_p)
