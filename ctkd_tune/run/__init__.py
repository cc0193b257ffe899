"""Run: one distillation, start to end — prepare, the loop, its step, evaluation, checks, checkpoints.

    prepare.py         everything a run needs besides its config, loaded and checked before step 0
    loop.py            `distill`: the training loop, read top to bottom; what it trains and checkpoints
    step.py            a `Batch` built once, the `Step` interface (loss, evaluate) and the logits path
    fused_step.py      the fused path's `Step` (hidden states → loss, no [N, V] logits), and who may take it
    evaluation.py      held-out metrics from sums (both paths), the run's reference points
    summary.py         `RunStatus` (completed | diverged), the stop reason, and summary.json
    checks.py          the sanity checks of a finished run (runaway, drift, divergence)
    checkpoint.py      the full training state, saved atomically and loaded with weights_only=True
    teacher.py         the frozen teacher, or its head alone
    teacher_states.py  the teacher's outputs computed once and reused by every run on the same batches
    progress.py, tboard.py, sample.py, folder.py   printing, TensorBoard, side-by-side samples, the run's folder

Imports: core, inputs, `ctkd_tune.config` and `ctkd_tune.io` — never search or validate, and never Ray or Optuna
(`ctkd-tune distill` runs without them).
"""
