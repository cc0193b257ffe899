"""The Ray side of `ctkd-tune validate`: one Ray task per (arm, seed) run, rows written as runs finish.

    execute(directory, plan, todo, rows, curves, cpus, gpus, address)   # by driver.run_validation

Each task runs `distill` on the run's config and returns its verdict inputs (`verdict.run_metrics`) and a compact
per-step curve; the first seed's task also saves the student (save_pretrained + tokenizer, written to a temporary
folder then renamed). The driver appends a row per finished run and atomically rewrites validation.parquet and
validation_curves.parquet, so an interruption (Ctrl-C cancels the pending tasks) loses no finished run. With a
Ray cluster (--address, or RAY_ADDRESS), results/NAME must be on storage shared with the workers, for the students.
This module imports no Ray: the connection and the tasks go through `search.cluster`, which imports Ray only
when runs are executed (`ctkd-tune distill` never imports it).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ctkd_tune.config import Config, ConfigError, apply_overrides, from_dict
from ctkd_tune.search.experiment import VALIDATION, VALIDATION_CURVES, VALIDATION_PLAN, read_rows
from ctkd_tune.io import atomic_write_json, atomic_write_parquet
from ctkd_tune.search.cluster import cancel_tasks, cluster_cpus, disconnect, open_cluster, remote_task, wait_one
from ctkd_tune.validate.verdict import ValidationStatus, run_metrics
from ctkd_tune.values import error_line, finite

# the few of results.CURVE_METRICS a validation run keeps per evaluation (a contract test holds it to that list)
CURVE_KEYS = ("ctkd/temperature", "ctkd/temperature_min", "ctkd/temperature_max", "ctkd/lambda", "val/ppl")
STUDENTS = Path("validation") / "students"


def run_config(arm: dict[str, Any], seed: int) -> Config:
    """The config of one validation run: the arm's config with every seed set to `seed`."""
    return from_dict(apply_overrides(arm["config"], {"train.seed": seed, "train.data_seed": seed,
                                                     "train.init_seed": seed}))


def execute(directory: Path, plan: dict[str, Any], todo: list, rows: list, curves: list, cpus: float,
            gpus: float, address: str | None = None) -> None:
    """Run `todo` as Ray tasks; after each finished run, atomically rewrite validation(_curves).parquet."""
    arms = {a["arm"]: a for a in plan["arms"]}
    started = open_cluster(address)
    try:
        available = cluster_cpus()
        if cpus > available:
            raise ConfigError(f"--cpus-per-run {cpus:g} exceeds the cluster's {available:g} CPUs")
        atomic_write_json(directory / VALIDATION_PLAN, plan)
        stored = _store_teacher_outputs(todo)
        submit = remote_task(_run_one, cpus, gpus)
        # an arm whose config equals another's (the search's best is often fallback C) runs once per seed: on
        # CPU the same config and seed give the same run, bit for bit. Its rows are copies, marked same_run_as.
        made = {_run_key(arms[r["arm"]], r["seed"]): r for r in rows if r["arm"] in arms}
        pending, twins, submitted, copies = {}, {}, {}, []
        for arm, seed in todo:
            key = _run_key(arm, seed)
            if key in made:
                copies.append((made[key], arm, seed))
            elif key in submitted:
                twins.setdefault(submitted[key], []).append(arm)
            else:
                student = directory / STUDENTS / arm["arm"] if seed == plan["seeds"][0] else None
                ref = submit(run_config(arm, seed).to_dict(), str(student) if student else None, stored.get(seed))
                pending[ref] = submitted[key] = (arm["arm"], seed)
        print(f"ctkd-tune: validating {len(todo)} runs ({len(arms)} arms × {len(plan['seeds'])} seeds, "
              f"{len(rows)} done before, {len(todo) - len(pending)} identical to another arm's run)")
        for source, arm, seed in copies:
            _add_twin(directory, plan, rows, curves, source, arm, seed)
        try:
            while pending:
                ref, out, err = wait_one(list(pending))
                name, seed = pending.pop(ref)
                if err is not None:  # a run that raised: recorded, re-run by --resume
                    reason = error_line(err, with_type=True)[:300]
                    out = {"metrics": {"status": ValidationStatus.ERROR, "stop_reason": reason}, "curve": []}
                rows.append(run_row(arms[name], seed, out["metrics"]))
                curves += [{"arm": name, "seed": seed, **c} for c in out["curve"]]
                _write(directory, rows, curves)
                m = out["metrics"]
                ppl = f"val/ppl {m['final_val_ppl']:.2f}" if finite(m.get("final_val_ppl")) else m.get("stop_reason")
                print(f"[{len(rows)}/{len(arms) * len(plan['seeds'])}] {name} seed {seed}: {m['status']}, {ppl}")
                for twin in twins.get((name, seed), []):
                    _add_twin(directory, plan, rows, curves, rows[-1], twin, seed)
        except KeyboardInterrupt:
            cancel_tasks(pending)
            raise
    finally:
        disconnect(started, logs_to=directory / "logs" / "validate")


def _store_teacher_outputs(todo: list) -> dict[int, str]:
    """The teacher's outputs on each seed's training batches, once: every arm of a seed trains on the same ones.
    Returns their folders by seed (a seed whose outputs are not stored is absent)."""
    from ctkd_tune.run.prepare import prepare
    from ctkd_tune.run.teacher_states import build

    setup, stored = None, {}
    for seed in sorted({seed for _, seed in todo}):
        cfg = run_config(next(arm for arm, s in todo if s == seed), seed)
        setup = setup or prepare(cfg)
        folder = build(cfg, setup.teacher, setup.data)
        if folder is not None:
            stored[seed] = str(folder)
    return stored


def _run_key(arm: dict[str, Any], seed: int) -> str:
    return json.dumps(run_config(arm, seed).to_dict(), sort_keys=True)


def _add_twin(directory: Path, plan: dict[str, Any], rows: list, curves: list, source: dict[str, Any],
              arm: dict[str, Any], seed: int) -> None:
    """Record `arm`'s run at `seed` as a copy of `source`, the row of the identical run (and its curve, student)."""
    if source["status"] == ValidationStatus.ERROR:  # not a result: the twin stays missing and --resume runs both again
        return
    name = arm["arm"]
    rows.append({**source, **{k: arm.get(k) for k in ("kind", "label", "order", "trial_id")}, "arm": name,
                 "same_run_as": source.get("same_run_as") or source["arm"]})
    curves += [{**c, "arm": name} for c in curves if (c["arm"], c["seed"]) == (source["arm"], seed)]
    student = directory / STUDENTS / source["arm"]
    if seed == plan["seeds"][0] and student.is_dir():
        shutil.copytree(student, directory / STUDENTS / name, dirs_exist_ok=True)
    _write(directory, rows, curves)
    print(f"[{len(rows)}/{len(plan['arms']) * len(plan['seeds'])}] {name} seed {seed}: the same run as "
          f"{rows[-1]['same_run_as']} (identical config and seed), {source['status']}")


def _write(directory: Path, rows: list, curves: list) -> None:
    atomic_write_parquet(directory / VALIDATION, _rectangular(rows))
    atomic_write_parquet(directory / VALIDATION_CURVES, _rectangular(curves))


def _run_one(config: dict[str, Any], student_dir: str | None, stored: str | None = None) -> dict[str, Any]:
    """One validation run (inside a Ray task): distill, summarise, keep the student if asked. `stored`: the teacher
    states built for its seed (the run then loads the teacher's head only)."""
    from ctkd_tune.run.loop import distill
    from ctkd_tune.run.prepare import prepare
    from ctkd_tune.search.cluster import worker_setup

    cfg = worker_setup(from_dict(config))
    setup = prepare(cfg, stored=stored)
    result = distill(cfg, lambda metrics, checkpoint: None, setup=setup, progress=False)
    if student_dir and result.history:
        final = Path(student_dir)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=_mkdir(final.parent)))
        result.student.save_pretrained(tmp)
        setup.tokenizer.save_pretrained(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    curve = [{"step": r["step"], **{k: r.get(k) for k in CURVE_KEYS}} for r in result.history]
    return {"metrics": run_metrics(result.summary, result.history, cfg.train.steps), "curve": curve}


def rejudge_temperatures(directory: Path, plan: dict[str, Any], runs):
    """`runs` (validation.parquet as a DataFrame) with `runaway`, `drift` and the checks recomputed from each
    run's stored per-step temperatures (validation_curves.parquet) by today's `checks`: a validation extended with
    --resume judges its old and new runs alike, also after a check changed."""
    from ctkd_tune.run.checks import temperature_drift, temperature_runaway
    from ctkd_tune.validate.verdict import DRIFT_CHECK, FINAL_CHECK

    path = directory / VALIDATION_CURVES
    if not path.is_file() or not len(runs):
        return runs
    curves: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in read_rows(path):
        if finite(row.get("ctkd/temperature")):
            curves.setdefault((row["arm"], row["seed"]), []).append(row)
    arms, runs = {a["arm"]: a for a in plan["arms"]}, runs.copy()
    for i, row in runs.iterrows():
        history = curves.get((row["arm"], row["seed"]))
        if not history or row["arm"] not in arms or row["status"] == ValidationStatus.ERROR:
            continue
        cfg = run_config(arms[row["arm"]], int(row["seed"]))
        runaway, drift = temperature_runaway(history, cfg), temperature_drift(history, cfg)
        failed = {name for name in str(row.get("checks_failed") or "").split(", ") if name}
        failed = (failed - {DRIFT_CHECK, "no_temperature_runaway"}) | ({DRIFT_CHECK} if drift else set()) | \
            ({"no_temperature_runaway"} if runaway else set())
        runs.at[i, "runaway"], runs.at[i, "drift"] = runaway, drift
        runs.at[i, "checks_failed"] = ", ".join(sorted(failed))
        runs.at[i, "checks_passed"] = not (failed - {FINAL_CHECK})
    return runs


def run_row(arm: dict[str, Any], seed: int, metrics: dict[str, Any]) -> dict[str, Any]:
    """A validation.parquet row: the arm, the seed, the run's metrics and its flattened config (lists as JSON)."""
    config = {k: json.dumps(v) if isinstance(v, list) else v for k, v in run_config(arm, seed).flat().items()}
    return {"arm": arm["arm"], "kind": arm["kind"], "label": arm["label"], "order": arm["order"],
            "trial_id": arm.get("trial_id"), "seed": seed, **metrics, **config}


def finished(directory: Path, plan: dict[str, Any]) -> tuple[list, list]:
    """Rows (and curves) of earlier runs that --resume keeps: planned (arm, seed) pairs that did not raise."""
    planned = {(a["arm"], s) for a in plan["arms"] for s in plan["seeds"]}
    rows = read_rows(directory / VALIDATION) if (directory / VALIDATION).is_file() else []
    rows = [r for r in rows if (r["arm"], r["seed"]) in planned and r["status"] != ValidationStatus.ERROR]
    keep = {(r["arm"], r["seed"]) for r in rows}
    curves = read_rows(directory / VALIDATION_CURVES) if (directory / VALIDATION_CURVES).is_file() else []
    return rows, [c for c in curves if (c["arm"], c["seed"]) in keep]


def _rectangular(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = list(dict.fromkeys(key for row in rows for key in row))
    return [{key: row.get(key) for key in keys} for row in rows]


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path

