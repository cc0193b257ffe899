"""`ctkd-tune report`: plots of a search (and its validation) with the verdict, as Markdown and standalone HTML.

    ctkd-tune report --experiment results/ctkd-search

Writes results/NAME/report/*.png (temperature and λ per trial, val/ppl curves, the best val/ppl against the steps
spent, final val/ppl against each searched knob, Optuna's parameter importances on COMPLETE trials only, the
validation arms side by side and their temperatures), results/NAME/report.md (images linked) and
results/NAME/report.html (images embedded as base64: one file to send around). A plot that cannot be drawn (e.g.
importances with fewer than MIN_IMPORTANCE_TRIALS = 5 COMPLETE trials) is replaced by a note saying why. Reads
optuna.db with Optuna (the importances); imports no Ray.
"""

from __future__ import annotations

import base64
import html
import re
import warnings
from pathlib import Path
from typing import Any

from ctkd_tune.validate import plots
from ctkd_tune.search.experiment import VALIDATION_CURVES, Experiment, open_experiment, read_table
from ctkd_tune.io import atomic_write_text
from ctkd_tune.search.results import display_name
from ctkd_tune.validate.verdict import judge_plan
from ctkd_tune.validate.table import table_rows

MIN_IMPORTANCE_TRIALS = 5
"""Fewer COMPLETE trials than this: the importance plot is not drawn (the report says why)."""

# A report is a list of blocks, rendered twice: ("h1"|"h2"|"p", text), ("ul", [text]), ("table", [row dicts]),
# ("img", path, caption), ("note", text).
Block = tuple


def build_report(experiment: str | Path) -> Path:
    """Write the plots, report.md and report.html of `experiment`; returns the path of report.md."""
    exp = open_experiment(experiment)
    out = exp.directory / "report"
    out.mkdir(exist_ok=True)
    trials, curves = exp.trials, exp.curves
    counts = ", ".join(f"{n} {s}" for s, n in trials["status"].value_counts().items())
    best = exp.completed.sort_values("final_val_ppl").iloc[0]
    params = exp.searched_params()
    blocks: list[Block] = [
        ("h1", f"CTKD search report: {exp.name}"),
        ("p", f"{len(trials)} trials ({counts}). Best completed trial `{display_name(best)}`: final val/ppl "
              f"{best['final_val_ppl']:.2f}, final temperature {best['final_temperature']:.3f}. "
              f"Searched knobs: {', '.join(f'`{p}`' for p in params) or 'none found'}."),
    ]
    blocks += _validation_blocks(exp, out)
    blocks += [("h2", "Search"),
               _figure(plots.trajectories(curves, trials, out / "temperature_lambda.png"),
                       "Temperature τ and λ of every trial at its evaluations (red: best completed trial)."),
               _figure(plots.ppl_curves(curves, trials, out / "val_ppl.png"),
                       "Held-out perplexity of every trial; dashed lines were stopped early by ASHA."),
               _figure(plots.search_progress(trials, curves, out / "progress.png"),
                       "Best completed val/ppl against the training steps the search had spent; a flat tail "
                       "means more trials of this space are unlikely to help."),
               _figure(plots.knobs(_chosen(trials, params), params, out / "knobs.png"),
                       "Final val/ppl against each searched knob; crosses are trials stopped early (not final)."),
               _importance_block(exp, out / "importance.png"),
               ("h2", "Best trials"), ("table", _top_trials(exp, params))]
    md, page = render_markdown(blocks, exp.directory), render_html(blocks, exp.name)
    atomic_write_text(exp.directory / "report.md", md)
    atomic_write_text(exp.directory / "report.html", page)
    print(f"report: {exp.directory / 'report.md'}, {exp.directory / 'report.html'} ({out}/*.png)")
    return exp.directory / "report.md"


def _validation_blocks(exp: Experiment, out: Path) -> list[Block]:
    plan = exp.plan()
    if exp.validation is None or not len(exp.validation) or plan is None:
        return [("h2", "Validation"), ("note", f"No validation yet: run `ctkd-tune validate --experiment "
                                               f"{exp.directory}` to re-run the best trials with several seeds "
                                               "next to the fallbacks.")]
    verdict = judge_plan(exp.validation, plan)
    vcurves = read_table(exp.directory / VALIDATION_CURVES)
    return [("h2", "Validation verdict"), ("ul", verdict.lines), ("table", table_rows(verdict.arms)),
            _figure(plots.validation_arms(exp.validation, verdict.arms, plan["target"], out / "validation.png"),
                    f"Final val/ppl per arm over seeds {plan['seeds']}; the dashed line is the target."),
            _figure(plots.validation_temperature(vcurves, verdict.arms, out / "validation_temperature.png"),
                    "Temperature per validation arm (mean over seeds, band min–max).")]


def _importance_block(exp: Experiment, path: Path) -> Block:
    """Optuna's parameter importances (default evaluator: PED-ANOVA) over COMPLETE trials only."""
    import optuna

    db = exp.directory / "optuna.db"
    if not db.is_file():
        return ("note", "No optuna.db: no hyperparameter importance.")
    url = f"sqlite:///{db}"
    try:
        names = optuna.study.get_all_study_names(url)
        name = exp.name if exp.name in names else (names[0] if len(names) == 1 else None)
        if name is None:
            return ("note", f"optuna.db holds studies {names}, none named {exp.name!r}: no importance.")
        study = optuna.load_study(study_name=name, storage=url)
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if len(complete) < MIN_IMPORTANCE_TRIALS:
            return ("note", f"Hyperparameter importance not drawn: {len(complete)} COMPLETE trial(s) in the study; "
                            f"with fewer than {MIN_IMPORTANCE_TRIALS} a ranking is noise (pruned and failed trials "
                            "are not used).")
        varied = sorted({p for t in complete for p in t.params
                         if len({repr(u.params.get(p)) for u in complete}) > 1})  # a constant knob is never ranked
        if not varied:
            return ("note", "Hyperparameter importance not drawn: no parameter varies across the COMPLETE trials.")
        with warnings.catch_warnings(record=True) as caught:  # PED-ANOVA warns when a regime has < 2 trials
            warnings.simplefilter("always")
            values = optuna.importance.get_param_importances(study, params=varied)  # COMPLETE trials only
    except Exception as err:  # a study too small or too uniform for the evaluator: say so, keep the report
        return ("note", f"Hyperparameter importance skipped: {type(err).__name__}: {str(err).splitlines()[0]}")
    if not values:
        return ("note", "Hyperparameter importance skipped: no parameter varies across the COMPLETE trials.")
    few = " Few trials per regime: the importances are rough." if caught else ""
    return _figure(plots.importance(values, len(complete), path),
                   f"Parameter importance for val/ppl from Optuna's study `{name}` ({len(complete)} COMPLETE "
                   f"trials).{few}")


def _top_trials(exp: Experiment, params: list[str], limit: int = 10) -> list[dict[str, str]]:
    shown = exp.trials.sort_values("final_val_ppl", na_position="last").head(limit)
    rows = []
    for r in shown.to_dict("records"):
        row = {"trial": display_name(r), "status": r["status"], "final val/ppl": _fmt(r["final_val_ppl"]),
               "best val/ppl": _fmt(r["best_val_ppl"]), "final τ": _fmt(r.get("final_temperature")),
               "steps": _fmt(r.get("steps"))}
        row.update({p.split(".", 1)[1]: _fmt(r.get(p)) for p in params})
        rows.append(row)
    return rows


def _chosen(trials, params: list[str]):
    """Knob columns holding only what the searcher chose (the `params` JSON), so a conditional knob (gamma
    without the exp schedule) is blank where it did not apply instead of showing the base config's value."""
    import json

    if "params" not in trials:
        return trials
    chosen = trials["params"].map(lambda text: json.loads(text) if isinstance(text, str) and text else {})
    frame = trials.copy()
    for p in params:
        frame[p] = [c.get(p) for c in chosen]
    return frame


def _figure(result: Path | str, caption: str) -> Block:
    return ("img", result, caption) if isinstance(result, Path) else ("note", result)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "—"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# --- rendering ----------------------------------------------------------------------------------------------------

def render_markdown(blocks: list[Block], root: Path) -> str:
    out = []
    for kind, *rest in blocks:
        if kind in ("h1", "h2"):
            out.append(f"{'#' if kind == 'h1' else '##'} {rest[0]}")
        elif kind == "p":
            out.append(rest[0])
        elif kind == "note":
            out.append(f"> {rest[0]}")
        elif kind == "ul":
            out.append("\n".join(f"- {item}" for item in rest[0]))
        elif kind == "table" and rest[0]:
            keys = list(rest[0][0])
            cell = lambda v: str(v).replace("|", "\\|")
            out.append("\n".join(["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)] +
                                 ["| " + " | ".join(cell(r[k]) for k in keys) + " |" for r in rest[0]]))
        elif kind == "img":
            out.append(f"![{rest[1]}]({rest[0].relative_to(root).as_posix()})\n\n*{rest[1]}*")
    return "\n\n".join(out) + "\n"


def render_html(blocks: list[Block], title: str) -> str:
    out = []
    for kind, *rest in blocks:
        if kind in ("h1", "h2", "p"):
            out.append(f"<{kind}>{_inline(rest[0])}</{kind}>")
        elif kind == "note":
            out.append(f'<p class="note">{_inline(rest[0])}</p>')
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in rest[0]) + "</ul>")
        elif kind == "table" and rest[0]:
            keys = list(rest[0][0])
            out.append("<table><tr>" + "".join(f"<th>{html.escape(k)}</th>" for k in keys) + "</tr>" +
                       "".join("<tr>" + "".join(f"<td>{html.escape(str(r[k]))}</td>" for k in keys) + "</tr>"
                               for r in rest[0]) + "</table>")
        elif kind == "img":
            data = base64.b64encode(rest[0].read_bytes()).decode()
            out.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(rest[1])}">'
                       f"<figcaption>{_inline(rest[1])}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}img{max-width:100%}"
             "table{border-collapse:collapse;font-size:0.85em}td,th{border:1px solid #ccc;padding:3px 6px}"
             ".note{background:#f6f6f6;border-left:4px solid #999;padding:0.5em}figcaption{color:#555}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")


def _inline(text: str) -> str:
    """Escape, then render `code` spans."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))
