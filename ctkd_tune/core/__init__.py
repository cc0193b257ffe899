"""Core: the CTKD mathematics as pure tensor functions and small modules — no files, no models, no Ray.

    ctkd.py         gradient reversal, the bounded learnable temperatures, the λ schedules
    temperature.py  τ for one step in every mode (ctkd, learnable, fixed, anneal), and its statistics
    divergences.py  forward/reverse KL, skew KL, JSD: per-token values and their exact τ gradients
    losses.py       the KD + CE loss on logits, and its per-chunk kernel
    fused_loss.py   the same loss computed from hidden states and the head, chunk by chunk (no [N, V] logits)

Imports: torch, `ctkd_tune.config` and each other only — never inputs, run, Ray or Optuna (a test reads the imports).
"""
