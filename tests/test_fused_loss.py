"""Tests for ctkd_tune.core.fused_loss: parity of the fused head + KD + CE loss with the logits path (s = h·Wᵀ + b, then
``kd_loss`` + F.cross_entropy) in value and every gradient, its float64 gradcheck, masks, bf16, tied heads, the
evaluation sums, the per-token features and bad input. The `gpu` tests run only where CUDA is available.

Run: python -m pytest tests/test_fused_loss.py
"""

import pytest
import torch
import torch.nn.functional as F

import ctkd_tune.core.fused_loss as fused_loss
from ctkd_tune.core.ctkd import token_features
from ctkd_tune.core.fused_loss import fused_eval_sums, fused_kd_ce_loss, fused_token_features
from ctkd_tune.core.losses import kd_loss

N, V, HS, HT = 20, 37, 8, 12


def make_inputs(n=N, v=V, hs=HS, ht=HT, seed=0, dtype=torch.float32, bias=True, ignored=3):
    """Student and teacher hidden states / heads (teacher logits correlated with the student's) and labels."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape, scale=1.0: (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype)
    labels = torch.randint(0, v, (n,), generator=g)
    labels[torch.randperm(n, generator=g)[:ignored]] = -100
    return {"student_hidden": r(n, hs), "student_head": r(v, hs, scale=0.7), "student_bias": r(v, scale=0.3) if bias
            else None, "teacher_hidden": r(n, ht), "teacher_head": r(v, ht, scale=0.7),
            "teacher_bias": r(v, scale=0.3) if bias else None, "labels": labels}


STUDENT = ("student_hidden", "student_head", "student_bias")


def leaves(inputs, tau):
    """Fresh leaf copies of the student's tensors and τ, requiring grad."""
    out = dict(inputs)
    for name in STUDENT:
        if inputs[name] is not None:
            out[name] = inputs[name].detach().clone().requires_grad_()
    return out, tau.detach().clone().requires_grad_()


def logits_path(inputs, tau, mask=None, chunk_size=1024):
    s = inputs["student_hidden"] @ inputs["student_head"].T
    t = inputs["teacher_hidden"] @ inputs["teacher_head"].T
    if inputs["student_bias"] is not None:
        s, t = s + inputs["student_bias"], t + inputs["teacher_bias"]
    kd = kd_loss(s, t, tau, mask, chunk_size=chunk_size)
    return kd, F.cross_entropy(s.float() if s.dtype == torch.bfloat16 else s, inputs["labels"])


def fused(inputs, tau, mask=None, **kwargs):
    return fused_kd_ce_loss(**inputs, tau=tau, mask=mask, **kwargs)


def values_and_grads(fn, inputs, tau, blend, **kwargs):
    """(kd, ce) and the gradients of blend[0]·kd + blend[1]·ce w.r.t. the student's tensors and τ."""
    inputs, tau = leaves(inputs, tau)
    kd, ce = fn(inputs, tau, **kwargs)
    (blend[0] * kd + blend[1] * ce).backward()
    grads = [inputs[name].grad for name in STUDENT if inputs[name] is not None]
    return [kd.detach(), ce.detach(), *grads, tau.grad]


def assert_close(ours, ref, rtol=1e-5, atol=1e-7):
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
        assert torch.allclose(a.float(), b.float(), rtol=rtol, atol=atol), (a - b).abs().max()


# -----------------------------------------------------------------------------
# Parity with the logits path

@pytest.mark.parametrize("per_token_tau", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("chunk_size", [4, 7, 64])  # 20 tokens: divides, does not divide, one chunk
def test_matches_logits_path(per_token_tau, masked, chunk_size):
    inputs = make_inputs()
    g = torch.Generator().manual_seed(1)
    tau = 1.0 + 3.0 * torch.rand(N, generator=g) if per_token_tau else torch.tensor(2.5)
    mask = torch.rand(N, generator=g) > 0.3 if masked else None
    blend = (0.3, 0.7)
    ours = values_and_grads(fused, inputs, tau, blend, mask=mask, chunk_size=chunk_size, kd_weight=0.3,
                            ce_weight=0.7)
    ref = values_and_grads(logits_path, inputs, tau, blend, mask=mask)
    assert ours[0].dtype == torch.float32 and ours[0].shape == ()
    assert_close(ours, ref)


@pytest.mark.parametrize("divergence", ["reverse_kl", "skew_kl", "jsd"])
def test_other_divergences_match_logits_path(divergence):
    """loss.divergence through the same kernels as kd_loss: value and every gradient, per-token τ, masked."""
    inputs = make_inputs(seed=11)
    g = torch.Generator().manual_seed(12)
    tau, mask = 1.0 + 3.0 * torch.rand(N, generator=g), torch.rand(N, generator=g) > 0.3
    extra = {"divergence": divergence, "alpha": 0.2, "beta": 0.3}
    ours = values_and_grads(fused, inputs, tau, (0.4, 0.6), mask=mask, chunk_size=7, kd_weight=0.4,
                            ce_weight=0.6, **extra)

    def logits_path_d(inputs, tau, mask=None):
        s = inputs["student_hidden"] @ inputs["student_head"].T + inputs["student_bias"]
        t = inputs["teacher_hidden"] @ inputs["teacher_head"].T + inputs["teacher_bias"]
        return kd_loss(s, t, tau, mask, **extra), F.cross_entropy(s, inputs["labels"])

    assert_close(ours, values_and_grads(logits_path_d, inputs, tau, (0.4, 0.6), mask=mask))


@pytest.mark.parametrize("blend", [(1.0, 0.0), (0.0, 1.0), (2.0, -0.5)])
def test_other_blend_than_declared_recomputes_exactly(blend):
    """The forward prepares the gradient of 0.5·kd + 0.5·ce; a backward asking for another blend is still exact."""
    inputs = make_inputs(seed=4)
    tau = torch.linspace(1.0, 4.0, N)
    ours = values_and_grads(fused, inputs, tau, blend, chunk_size=6, kd_weight=0.5, ce_weight=0.5)
    assert_close(ours, values_and_grads(logits_path, inputs, tau, blend))


@pytest.mark.parametrize("weights", [(1.0, 0.0), (0.0, 1.0)])
def test_declared_zero_weight(weights):
    """kd_weight = 0 (or ce_weight = 0) skips that part's gradient in the forward; the values are still both there."""
    inputs = make_inputs(seed=5, bias=False)
    tau = torch.tensor(1.7)
    ours = values_and_grads(fused, inputs, tau, weights, chunk_size=8, kd_weight=weights[0], ce_weight=weights[1])
    assert_close(ours, values_and_grads(logits_path, inputs, tau, weights))


def test_gradcheck_float64():
    inputs = make_inputs(n=7, v=5, hs=3, ht=4, seed=2, dtype=torch.float64, ignored=2)
    mask = torch.tensor([1, 1, 0, 1, 0, 1, 1], dtype=torch.bool)
    g = torch.Generator().manual_seed(3)
    args = [inputs[name].requires_grad_() for name in STUDENT]
    for tau in (torch.tensor(1.7, dtype=torch.float64), 1.0 + torch.rand(7, dtype=torch.float64, generator=g)):
        tau.requires_grad_()

        def both(hs, W, b, tau):  # unit grad on kd, then on ce: the backward's recompute path
            return fused_kd_ce_loss(hs, W, b, inputs["teacher_hidden"], inputs["teacher_head"],
                                    inputs["teacher_bias"], inputs["labels"], tau, mask, chunk_size=3)

        def blend(hs, W, b, tau):  # the declared blend: the gradient prepared in the forward
            kd, ce = fused_kd_ce_loss(hs, W, b, inputs["teacher_hidden"], inputs["teacher_head"],
                                      inputs["teacher_bias"], inputs["labels"], tau, mask, chunk_size=3,
                                      kd_weight=0.6, ce_weight=0.4)
            return 0.6 * kd + 0.4 * ce

        assert torch.autograd.gradcheck(both, (*args, tau))
        assert torch.autograd.gradcheck(blend, (*args, tau))


def test_bf16_inputs():
    """bf16 hidden states and heads: bf16 matmuls, float32 softmaxes; compared with the float32 logits path on the
    same (bf16-representable) numbers: values within 1e-2 relative, gradients within 3e-2 (bf16 rounding)."""
    inputs = make_inputs(n=32, v=50, seed=6, dtype=torch.bfloat16)
    tau = torch.tensor(2.0)
    ours = values_and_grads(fused, inputs, tau, (0.5, 0.5), chunk_size=5, kd_weight=0.5, ce_weight=0.5)
    assert ours[0].dtype == torch.float32 and all(g.dtype == torch.bfloat16 for g in ours[2:5])
    ref = values_and_grads(logits_path, {k: v.float() if v.is_floating_point() else v for k, v in inputs.items()},
                           tau, (0.5, 0.5))
    for a, b in zip(ours, ref):
        assert torch.isfinite(a).all()
        scale = b.float().abs().max()
        assert (a.float() - b.float()).abs().max() <= 3e-2 * scale + 1e-6, (a, b)
    assert torch.allclose(ours[0], ref[0], rtol=1e-2) and torch.allclose(ours[1], ref[1], rtol=1e-2)


def test_all_masked_is_zero_with_finite_zero_grads():
    inputs = make_inputs(n=6, ignored=6)
    kd, ce, *grads = values_and_grads(fused, inputs, torch.tensor(2.0), (0.5, 0.5), chunk_size=4,
                                      mask=torch.zeros(6, dtype=torch.bool), kd_weight=0.5, ce_weight=0.5)
    assert kd.item() == 0.0 and ce.item() == 0.0
    for g in grads:
        assert torch.equal(g, torch.zeros_like(g))


def test_tied_head_gradient_reaches_the_embedding_once():
    """The head is the embedding matrix: its gradient is the embedding's plus the head's, as on the logits path."""
    g = torch.Generator().manual_seed(7)
    emb0 = torch.randn(V, HS, generator=g)
    ids, labels = torch.randint(0, V, (N,), generator=g), torch.randint(0, V, (N,), generator=g)
    proj = torch.randn(HS, HS, generator=g)
    ht, Wt = torch.randn(N, HT, generator=g), torch.randn(V, HT, generator=g)

    def grad_of(use_fused):
        emb = torch.nn.Embedding(V, HS)
        with torch.no_grad():
            emb.weight.copy_(emb0)
        hidden = torch.tanh(emb(ids) @ proj)  # (N, HS): the body reads the embedding too
        if use_fused:
            kd, ce = fused_kd_ce_loss(hidden, emb.weight, None, ht, Wt, None, labels, 2.0, chunk_size=6)
        else:
            s = hidden @ emb.weight.T
            kd, ce = kd_loss(s, ht @ Wt.T, 2.0), F.cross_entropy(s, labels)
        (kd + ce).backward()
        return emb.weight.grad

    assert torch.allclose(grad_of(True), grad_of(False), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl"])  # in place / through the shared kernel
def test_no_grad_is_forward_only_and_tau_terms_only_when_tau_learns(monkeypatch, divergence):
    """No τ gradient terms for a constant τ (fixed / anneal modes, λ = 0 warmup); no gradients at all under no_grad."""
    calls = []
    real_kernel, real_in_place = fused_loss.divergence_kernel, fused_loss._forward_kl_ce_in_place

    def spy_kernel(*args):
        kernel = real_kernel(*args)

        def spy(*args, **kwargs):
            calls.append((kwargs.get("grad_s") is not None, kwargs.get("need_dtau")))
            return kernel(*args, **kwargs)
        return spy

    def spy_in_place(s, t, tau, y, w, g=None, *args, **kwargs):
        calls.append((g is not None, kwargs.get("need_dtau")))
        return real_in_place(s, t, tau, y, w, g, *args, **kwargs)

    monkeypatch.setattr(fused_loss, "divergence_kernel", spy_kernel)
    monkeypatch.setattr(fused_loss, "_forward_kl_ce_in_place", spy_in_place)
    inputs, _ = leaves(make_inputs(), torch.tensor(1.0))
    fused(inputs, torch.tensor(2.0), chunk_size=10, divergence=divergence)
    assert calls == [(True, False)] * 2  # student grads, no τ terms
    calls.clear()
    fused(inputs, torch.tensor(2.0, requires_grad=True), chunk_size=10, divergence=divergence)
    assert calls == [(True, True)] * 2
    calls.clear()
    with torch.no_grad():
        kd, ce = fused(inputs, torch.tensor(2.0, requires_grad=True), chunk_size=10, divergence=divergence)
    assert calls == [(False, False)] * 2 and not kd.requires_grad and not ce.requires_grad


@pytest.mark.parametrize("tau_kind", ["global", "token"])
@pytest.mark.parametrize("masked", [False, True])
def test_in_place_forward_kl_equals_the_shared_kernel(monkeypatch, tau_kind, masked):
    """Forward KL on float32 logits runs with the logits as scratch (4 rows, not 6): the same values and gradients
    as the shared kernel's path, with weights that differ between kd and ce."""
    inputs = make_inputs()
    n = inputs["labels"].numel()
    tau0 = torch.full((), 2.0) if tau_kind == "global" else torch.linspace(0.7, 3.0, n)
    mask = (torch.arange(n) % 3 != 0) if masked else None

    def run():
        leaf, tau = leaves(inputs, tau0)
        kd, ce = fused(leaf, tau, mask=mask, chunk_size=7, kd_weight=0.3, ce_weight=0.7)
        (0.3 * kd + 0.7 * ce).backward()
        return [kd, ce, tau.grad] + [leaf[k].grad for k in ("student_hidden", "student_head", "student_bias")]

    in_place = run()
    monkeypatch.setattr(fused_loss, "_in_place", lambda x, divergence: False)
    kernel = run()
    for a, b in zip(in_place, kernel):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_chunk_from_memory_budget():
    """Without chunk_size, the chunk is as many tokens as fit in chunk_mb (at least one); the values do not change."""
    inputs = make_inputs(n=64, v=1000)
    x = fused_loss._heads(*(inputs[k] for k in ("student_hidden", "student_head", "student_bias", "teacher_hidden",
                                                "teacher_head", "teacher_bias")))
    row = 1000 * (4 + 4 + 3 * 4 + 4)  # s, t, the kernel's 3 work rows and ∂/∂s, float32
    assert fused_loss._chunk_tokens(x, None, 10 * row / 2**20, True) == 10
    assert fused_loss._chunk_tokens(x, None, 0.0, True) == 1
    assert fused_loss._chunk_tokens(x, None, 1e6, True) == 64
    assert fused_loss._in_place(x, "forward_kl") and not fused_loss._in_place(x, "jsd")
    row_in_place = 1000 * (4 + 4 + 4 + 4)  # forward KL in place: s, t, one work row and ∂/∂s
    assert fused_loss._chunk_tokens(x, None, 10 * row_in_place / 2**20, True, n_work=1) == 10
    ref = fused(inputs, 2.0, chunk_size=64)
    for a, b in zip(fused(inputs, 2.0, chunk_mb=10 * row / 2**20), ref):
        assert torch.allclose(a, b, rtol=1e-6)


# -----------------------------------------------------------------------------
# Evaluation sums and per-token features

def test_eval_sums_equal_logits_path():
    inputs = make_inputs(n=30, seed=8, ignored=4)
    g = torch.Generator().manual_seed(10)  # a teacher close to the student, so that some top-1s agree
    inputs.update(teacher_hidden=inputs["student_hidden"] + 0.5 * torch.randn(30, HS, generator=g),
                  teacher_head=inputs["student_head"], teacher_bias=inputs["student_bias"])
    sums = fused_eval_sums(**inputs, chunk_size=7)
    s = inputs["student_hidden"] @ inputs["student_head"].T + inputs["student_bias"]
    t = inputs["teacher_hidden"] @ inputs["teacher_head"].T + inputs["teacher_bias"]
    valid = inputs["labels"] != -100
    assert sums["tokens"] == 30 and sums["labels"] == int(valid.sum())
    ce_sum = F.cross_entropy(s, inputs["labels"], reduction="sum").item()
    assert sums["ce_sum"] == pytest.approx(ce_sum, rel=1e-5)
    assert sums["kl_sum"] == pytest.approx(kd_loss(s, t, 1.0).item() * 30, rel=1e-5)
    assert sums["top1_agree"] == int((s.argmax(-1) == t.argmax(-1)).sum())
    assert 0 < sums["top1_agree"] < 30  # the test can tell a wrong count
    # over the tokens a mask picks (instruction data: the response tokens), as kd_loss with that mask
    masked = fused_eval_sums(**inputs, mask=valid, chunk_size=7)
    n = int(valid.sum())
    assert masked["tokens"] == n and masked["ce_sum"] == sums["ce_sum"]
    assert masked["kl_sum"] == pytest.approx(kd_loss(s, t, 1.0, mask=valid).item() * n, rel=1e-5)
    assert masked["top1_agree"] == int(((s.argmax(-1) == t.argmax(-1)) & valid).sum())


def test_token_features_equal_logits_path():
    inputs = make_inputs(n=25, seed=9)
    s = inputs["student_hidden"] @ inputs["student_head"].T + inputs["student_bias"]
    t = inputs["teacher_hidden"] @ inputs["teacher_head"].T + inputs["teacher_bias"]
    ours = fused_token_features(*(inputs[k] for k in ("student_hidden", "student_head", "student_bias",
                                                      "teacher_hidden", "teacher_head", "teacher_bias")),
                                chunk_size=6)
    assert ours.shape == (25, 4) and ours.dtype == torch.float32
    assert torch.allclose(ours, token_features(s, t), rtol=1e-5, atol=1e-6)


# -----------------------------------------------------------------------------
# Bad input: one line naming the tensor

@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(student_hidden=torch.randn(N, HS + 1)), "student_hidden has hidden size"),
    (lambda d: d.update(teacher_hidden=torch.randn(N, HT - 1)), "teacher_hidden has hidden size"),
    (lambda d: d.update(teacher_head=torch.randn(V + 1, HT), teacher_bias=torch.randn(V + 1)), "vocabulary"),
    (lambda d: d.update(student_head=torch.randn(V * HS)), r"student_head must be 2-D \(V, H\)"),
    (lambda d: d.update(teacher_hidden=torch.randn(N - 1, HT)), "teacher_hidden has 19 tokens"),
    (lambda d: d.update(student_bias=torch.randn(V - 1)), "student_bias must have shape"),
    (lambda d: d.update(labels=torch.zeros(N - 2, dtype=torch.long)), "labels has 18 entries"),
    (lambda d: d.update(labels=torch.full((N,), V)), "labels hold ids outside"),
    (lambda d: d.update(mask=torch.ones(N + 1)), "mask has 21 entries"),
    (lambda d: d.update(tau=torch.tensor(float("nan"))), "tau must be finite and > 0"),
    (lambda d: d.update(tau=torch.full((N,), float("inf"))), "tau must be finite and > 0"),
    (lambda d: d.update(tau=-1.0), "tau must be finite and > 0"),
    (lambda d: d.update(tau=torch.ones(3)), "tau must be a scalar or hold one value per token"),
])
def test_bad_input_is_one_line_naming_the_tensor(change, message):
    args = {**make_inputs(), "tau": 2.0}
    change(args)
    with pytest.raises(ValueError, match=message) as err:
        fused_kd_ce_loss(**args)
    assert "\n" not in str(err.value)


# -----------------------------------------------------------------------------
# GPU (skipped without CUDA; run by benchmarks/gpu_check.sh)

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_autocast_bf16_matches_float32_logits_path():
    """On CUDA under bf16 autocast (as the loop runs): bf16 matmuls, float32 softmaxes; values within 1e-2 relative
    of the float32 logits path, gradients within 3e-2 of their largest entry."""
    inputs = {k: v.cuda() if v is not None else None for k, v in make_inputs(n=512, v=3000, hs=64, ht=96).items()}
    tau = torch.linspace(1.0, 4.0, 512, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ours = values_and_grads(fused, inputs, tau, (0.5, 0.5), chunk_size=100, kd_weight=0.5, ce_weight=0.5)
    ref = values_and_grads(logits_path, inputs, tau, (0.5, 0.5))
    for a, b in zip(ours, ref):
        assert torch.isfinite(a).all() and a.shape == b.shape
        assert (a.float() - b.float()).abs().max() <= 3e-2 * b.float().abs().max() + 1e-6
    assert torch.allclose(ours[0], ref[0], rtol=1e-2) and torch.allclose(ours[1], ref[1], rtol=1e-2)
