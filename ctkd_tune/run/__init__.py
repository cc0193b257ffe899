"""Run: one distillation, start to end — prepare, the loop, its step, evaluation, checks, checkpoints.

    prepare.py         everything a run needs besides its config, loaded and checked before step 0
    loop.py            `distill`: the training loop, read top to bottom
    fused_step.py      the fused path's step and evaluation (hidden states → loss, no [N, V] logits)
    evaluation.py      held-out perplexity, KL and top-1 agreement
    checks.py          the sanity checks of a finished run (runaway, drift, divergence)
    checkpoint.py      the full training state, saved atomically and loaded with weights_only=True
    teacher.py         the frozen teacher, or its head alone
    teacher_states.py  the teacher's outputs computed once and reused by every run on the same batches
    progress.py, tboard.py, sample.py, folder.py   printing, TensorBoard, side-by-side samples, the run's folder

Imports: core, inputs and `ctkd_tune.config` — never Ray or Optuna (a test asserts it).
"""
