"""`ctkd-tune export` and `ctkd-tune report` on fabricated experiments (no Ray: the validation table is built).

Export → distill round trip: the exported file loads to exactly the recommended config and `ctkd-tune distill
--config` runs it unchanged; the validated student is a loadable Hugging Face directory. Report: every plot is a
non-empty PNG, report.md links them, report.html embeds them; the importance plot is not drawn (a note says why) when
the study has fewer than 5 COMPLETE trials. Bad experiments are one-line errors that write nothing.
"""

import json

import pytest
import yaml

from ctkd_tune.cli import main
from ctkd_tune.config import ConfigError, load_config
from ctkd_tune.search.experiment import open_experiment
from ctkd_tune.validate.export import export, recommend
from ctkd_tune.io import atomic_write_json, atomic_write_parquet
from ctkd_tune.validate.report import build_report
from ctkd_tune.validate.driver import make_plan
from ctkd_tune.validate.runs import STUDENTS, run_config, run_row
from test_validate import KNOBS, STEPS, fabricate_experiment  # the search's tables, fabricated (same schema)

PASSING = {"t00-cosine-lam0.8": [250.0, 252.0], "fallback_A": [260.0, 261.0], "fallback_B": [270.0, 275.0],
           "fallback_C": [262.0, 259.0], "learnable": [265.0, 266.0]}


def add_validation(exp, ppl_by_arm):
    """validation.json / .parquet / _curves.parquet as `ctkd-tune validate --top-k 1 --seeds 2` writes them."""
    plan = make_plan(open_experiment(exp), top_k=1, n_seeds=2, steps=STEPS, rank_by="final", target=None)
    rows, curves = [], []
    for arm in plan["arms"]:
        for seed, ppl in zip(plan["seeds"], ppl_by_arm[arm["arm"]]):
            rows.append(run_row(arm, seed, {
                "status": "completed", "stop_reason": None, "final_val_ppl": ppl, "best_val_ppl": ppl,
                "final_temperature": 2.1, "final_lambda": 0.8, "steps": STEPS, "checks_passed": True,
                "checks_failed": "", "spike": False, "runaway": False, "tau_start": 2.0, "tau_mid": 2.05,
                "tau_end": 2.1, "tau_lo": 2.0, "tau_hi": 2.1, "wall_time_s": 1.0}))
            curves += [{"arm": arm["arm"], "seed": seed, "step": s, "ctkd/temperature": 2.0 + 0.005 * s * seed,
                        "ctkd/lambda": s / STEPS, "val/ppl": ppl * 1.5 if s == 10 else None}
                       for s in range(1, STEPS + 1)]
    atomic_write_json(exp / "validation.json", plan)
    atomic_write_parquet(exp / "validation.parquet", rows)
    atomic_write_parquet(exp / "validation_curves.parquet", curves)
    return plan


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models: one thread is fastest, and two threads crawl when other jobs share the CPU cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def experiment(tmp_path):
    return fabricate_experiment(tmp_path / "results" / "exp")


def test_export_validated_round_trip_yaml_and_json(experiment, tmp_path, capsys):
    plan = add_validation(experiment, PASSING)
    recommended = run_config(plan["arms"][0], plan["seeds"][0])  # trial 0 wins, exported with its first seed
    path = export(experiment)
    assert path == experiment / "recommended.yaml"
    text = path.read_text()
    assert text.startswith(f"# ctkd-tune distill --config {path}")
    assert load_config(path) == recommended
    prov = yaml.safe_load(text)["provenance"]
    assert prov["source"] == "validation" and prov["arm"] == "t00-cosine-lam0.8" and prov["trial_id"] == "t0000"
    assert prov["validation_seeds"] == [1, 2] and prov["seed"] == 1 and prov["experiment"] == "exp"
    assert prov["validation"]["final_val_ppl_mean"] == pytest.approx(251.0)
    assert prov["validation"]["diff_vs_fallback_A"] == pytest.approx(-9.5)
    assert set(prov["versions"]) >= {"torch", "transformers", "ray", "optuna", "ctkd-tune"}
    assert prov["git_commit"] is None or len(prov["git_commit"]) == 40
    as_json = export(experiment, fmt="json", output=tmp_path / "rec.json")
    assert json.loads(as_json.read_text())["config"] == recommended.to_dict()
    assert load_config(as_json) == recommended  # YAML reads JSON: `distill --config rec.json` works too
    # `ctkd-tune distill --config EXPORTED` runs it unchanged
    run = tmp_path / "run"
    assert main(["distill", "--config", str(path), "--output", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["config"] == recommended.to_dict() and summary["steps"] == STEPS


def test_export_with_student_copies_a_loadable_model(experiment, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ctkd_tune.run.loop import distill

    from ctkd_tune.run.prepare import prepare

    plan = add_validation(experiment, PASSING)
    cfg = run_config(plan["arms"][0], plan["seeds"][0])
    setup = prepare(cfg)
    result = distill(cfg, lambda metrics, checkpoint: None, setup=setup, progress=False)
    kept = experiment / STUDENTS / "t00-cosine-lam0.8"  # what validate keeps for each arm's first seed
    result.student.save_pretrained(kept)
    setup.tokenizer.save_pretrained(kept)
    dest = tmp_path / "student"
    export(experiment, with_student=dest)
    model = AutoModelForCausalLM.from_pretrained(dest)
    assert AutoTokenizer.from_pretrained(dest).get_vocab() == setup.tokenizer.get_vocab()
    assert model.config.vocab_size == result.student.config.vocab_size
    trained = result.student.state_dict()
    assert all(torch.equal(value, trained[key]) for key, value in model.state_dict().items())  # the trained weights
    assert json.loads((dest / "ctkd_provenance.json").read_text())["provenance"]["arm"] == "t00-cosine-lam0.8"
    with pytest.raises(ConfigError, match="not empty"):
        export(experiment, with_student=dest)


def test_export_without_validation_uses_the_best_trial_and_says_so(experiment, capsys):
    path = export(experiment)
    prov = yaml.safe_load(path.read_text())["provenance"]
    assert prov["source"] == "search" and prov["trial_id"] == "t0000" and "not validated" in prov["warning"]
    assert load_config(path).temperature.tau_max == 4.0 and load_config(path).train.steps == STEPS
    assert "WARNING: not validated" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="needs a validated recommendation"):
        export(experiment, with_student=experiment.parent / "s")


def test_export_when_the_validation_passes_nothing(experiment):
    add_validation(experiment, {arm: [900.0, 950.0] for arm in PASSING})  # above the tiny target 400
    rec = recommend(open_experiment(experiment))
    assert rec.provenance["source"] == "search" and "recommends no arm" in rec.provenance["warning"]
    with pytest.raises(ConfigError, match="--format"):
        export(experiment, fmt="toml")


def test_report_writes_readable_plots_markdown_and_html(experiment):
    add_validation(experiment, PASSING)
    md_path = build_report(experiment)
    pngs = sorted(p.name for p in (experiment / "report").glob("*.png"))
    assert pngs == ["knobs.png", "progress.png", "temperature_lambda.png", "val_ppl.png",
                    "validation.png", "validation_temperature.png"]  # no importance: 3 COMPLETE trials
    for name in pngs:
        data = (experiment / "report" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
    md = md_path.read_text()
    assert all(f"](report/{name})" in md for name in pngs)
    assert "Recommended: t00-cosine-lam0.8" in md and "| arm |" in md
    assert "Hyperparameter importance not drawn: 3 COMPLETE trial(s)" in md
    page_path = experiment / "report.html"
    assert page_path.stat().st_mode & 0o044 == (experiment / "report" / pngs[0]).stat().st_mode & 0o044  # as PNGs
    page = page_path.read_text()
    assert page.count("data:image/png;base64,") == len(pngs) and "Recommended: t00-cosine-lam0.8" in page


def test_report_skips_importance_with_fewer_than_two_complete_trials(tmp_path):
    exp = fabricate_experiment(tmp_path / "one", knobs=[KNOBS[0], KNOBS[3]], report_times=False)
    md = build_report(exp).read_text()
    assert "Hyperparameter importance not drawn: 1 COMPLETE trial(s)" in md
    assert "no report times (a search from an older ctkd-tune): no progress plot" in md
    assert "No validation yet" in md and not (exp / "report" / "importance.png").exists()
    assert (exp / "report" / "knobs.png").stat().st_size > 0


@pytest.mark.parametrize("command", ["export", "report"])
def test_bad_experiments_are_one_line_errors(command, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    pruned = fabricate_experiment(tmp_path / "pruned", knobs=[KNOBS[3]], with_study=False)
    for path, message in ((tmp_path / "nope", "no such directory"), (empty, "no trials.parquet"),
                          (pruned, "no completed trials")):
        before = sorted(p.name for p in tmp_path.rglob("*"))
        assert main([command, "--experiment", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("ctkd-tune: error:") and message in err and err.count("\n") == 1
        assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_help_lists_the_flags(capsys):
    for command, flags in (("export", ("--experiment", "--format", "--output", "--with-student")),
                           ("report", ("--experiment",))):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out
        assert all(flag in out for flag in flags)


def test_report_ranks_only_knobs_that_varied(tmp_path, monkeypatch):
    from ctkd_tune.validate import plots

    knobs = [({"temperature.tau_max": 2.5 + i, "schedule.lambda_max": 0.1 * (i + 1), "schedule.type": "cosine"},
              "completed", 250.0 + 7 * i * (-1) ** i) for i in range(6)]
    exp = fabricate_experiment(tmp_path / "six", knobs=knobs)
    ranked, draw = {}, plots.importance
    monkeypatch.setattr(plots, "importance", lambda values, n, path: ranked.update(values) or draw(values, n, path))
    build_report(exp)
    assert set(ranked) == {"temperature.tau_max", "schedule.lambda_max"}  # schedule.type was always cosine
