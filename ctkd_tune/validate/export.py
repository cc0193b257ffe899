"""`ctkd-tune export`: write the recommended configuration, with its provenance, as a runnable config file.

    ctkd-tune export --experiment results/ctkd-search                       # → results/ctkd-search/recommended.yaml
    ctkd-tune export --experiment results/ctkd-search --format json --output best.json
    ctkd-tune export --experiment results/ctkd-search --with-student models/ctkd-student
    ctkd-tune distill --config results/ctkd-search/recommended.yaml --output runs/final   # runs it unchanged

The recommendation comes from the validation (`ctkd-tune validate`) when there is one: the recommended arm's
config with its first validation seed (the seed of the kept student). Without a validation — or when no arm
passed it — it is the best completed trial of the search, and the provenance says so (`source`, `warning`).
The file is {provenance: {...}, config: {...}}; `load_config` reads the `config` part of such a file, and reads
JSON too (YAML is a superset of JSON). Provenance: experiment, source, arm / trial id, seeds, validation
metrics, package versions, the git commit of the code when available.

`--with-student DIR` copies the student that `validate` kept for the recommended arm (its first seed, trained
with exactly the exported config) as a Hugging Face model directory with its tokenizer; it needs a validation.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from ctkd_tune.config import Config, ConfigError
from ctkd_tune.search.experiment import TRIALS, Experiment, open_experiment, read_rows
from ctkd_tune.io import atomic_write_text
from ctkd_tune.validate.verdict import Target, judge_plan

PACKAGES = ("torch", "transformers", "ray", "optuna", "ctkd-tune")


@dataclass
class Recommendation:
    config: Config
    provenance: dict[str, Any]
    student: Path | None  # the kept student of a validated arm, if any


def recommend(exp: Experiment) -> Recommendation:
    """The validated recommendation if there is one, else the best completed trial (provenance says which)."""
    from ctkd_tune.validate.runs import STUDENTS, run_config

    plan, warning = exp.plan(), None
    if exp.validation is not None and len(exp.validation) and plan is not None:
        verdict = judge_plan(exp.validation, plan)
        if verdict.recommended is not None:
            arm = next(a for a in plan["arms"] if a["arm"] == verdict.recommended)
            stats = verdict.arms.set_index("arm").loc[arm["arm"]]
            seed = plan["seeds"][0]
            student = exp.directory / STUDENTS / arm["arm"]
            return Recommendation(run_config(arm, seed), {
                "source": "validation", "experiment": exp.name, "directory": str(exp.directory),
                "arm": arm["arm"], "kind": arm["kind"], "label": arm["label"], "trial_id": arm.get("trial_id"),
                "optuna_trial": arm.get("optuna_trial"), "seed": seed, "validation_seeds": plan["seeds"],
                "validation": {"final_val_ppl_mean": stats["ppl_mean"], "final_val_ppl_std": stats["ppl_std"],
                               "diff_vs_fallback_A": stats["diff_vs_A"],
                               "diff_ci95": [stats["ci_low"], stats["ci_high"]], "checks_passed": stats["checks"],
                               "stable": stats["stable"], "target": Target(**plan["target"]).describe(),
                               "verdict": verdict.lines}}, student if student.is_dir() else None)
        warning = "the validation recommends no arm (none passed): this is the search's best trial, unvalidated"
    from ctkd_tune.search.results import config_from_row

    rows = [r for r in read_rows(exp.directory / TRIALS)
            if r["status"] == "completed" and r.get("final_val_ppl") is not None]
    row = min(rows, key=lambda r: (r["final_val_ppl"], str(r["trial_id"])))
    cfg = config_from_row(row)
    return Recommendation(cfg, {
        "source": "search", "experiment": exp.name, "directory": str(exp.directory), "trial_id": row["trial_id"],
        "optuna_trial": row.get("optuna_trial"), "seed": cfg.train.seed,
        "search": {k: row.get(k) for k in ("final_val_ppl", "best_val_ppl", "final_temperature", "steps")},
        "warning": warning or f"not validated: run `ctkd-tune validate --experiment {exp.directory}` first"}, None)


def export(experiment: str | Path, fmt: str = "yaml", output: str | Path | None = None,
           with_student: str | Path | None = None) -> Path:
    """Write the recommended config (+ provenance) to `output`; optionally copy the validated student."""
    if fmt not in ("yaml", "json"):
        raise ConfigError(f"--format must be yaml or json, got {fmt!r}")
    exp = open_experiment(experiment)
    rec = recommend(exp)
    student_dest = Path(with_student) if with_student else None
    if student_dest is not None:
        if rec.provenance["source"] != "validation":
            raise ConfigError(f"--with-student needs a validated recommendation: run `ctkd-tune validate "
                              f"--experiment {exp.directory}` first")
        if rec.student is None:
            raise ConfigError(f"--with-student: the student of {rec.provenance['arm']} was not kept; train it "
                              "with `ctkd-tune distill --config EXPORTED_FILE --output DIR` (same config, same seed)")
        if student_dest.exists() and any(student_dest.iterdir()):
            raise ConfigError(f"--with-student {student_dest}: not empty")
    path = Path(output) if output else exp.directory / f"recommended.{fmt}"
    if output and (path.is_dir() or str(output).endswith(("/", os.sep))):  # a folder: the file goes inside
        path = path / f"recommended.{fmt}"
    if path.is_dir() or any(p.exists() and not p.is_dir() for p in path.parents):
        raise ConfigError(f"--output {output}: cannot write {path} (a folder is in the way, or a file where a folder "
                          "should be)")
    command = f"ctkd-tune distill --config {path} --output runs/{exp.name}-recommended"
    provenance = {"run_with": command, **rec.provenance, "exported_at": datetime.now(timezone.utc).isoformat(
        timespec="seconds"), "versions": versions(), "git_commit": git_commit(),
        "student": str(student_dest) if student_dest else None}
    document = _plain({"provenance": provenance, "config": rec.config.to_dict()})
    what = provenance.get("arm") or f"trial {provenance['trial_id']}"
    if fmt == "json":
        text = json.dumps(document, indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    else:
        text = (f"# {command}\n# recommended configuration of experiment {exp.name} ({provenance['source']}: {what})\n"
                + yaml.safe_dump(document, sort_keys=False, allow_unicode=True))
    atomic_write_text(path, text)
    if student_dest is not None:
        _copy_student(rec.student, student_dest, document)
    print(f"exported the {provenance['source']} recommendation ({what}) → {path}" +
          (f"; student → {student_dest}" if student_dest else ""))
    if provenance.get("warning"):
        print(f"ctkd-tune: WARNING: {provenance['warning']}")
    return path


def versions() -> dict[str, str | None]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str | None:
    """HEAD of the repository holding this code, or None (not a checkout, git missing, ...)."""
    try:
        proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else None


def _copy_student(source: Path, dest: Path, document: dict[str, Any]) -> None:
    """Copy the kept student next to `dest`, then rename: a crash leaves no half-copied model directory."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        (tmp / "ctkd_provenance.json").write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
        if dest.exists():
            dest.rmdir()  # checked empty above
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _plain(value: Any) -> Any:
    """numpy / pandas scalars → Python, enums → their values, NaN → None, recursively (YAML and JSON need plain
    values)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
