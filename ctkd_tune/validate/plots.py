"""The figures of `ctkd-tune report` (matplotlib, Agg backend): each function writes one PNG from the tables.

Every function takes frames of trials.parquet / curves.parquet / validation*.parquet and a path, and returns the
path, or a one-line note when there is nothing to plot (the report shows the note instead of the figure).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ctkd_tune.validate.verdict import ArmKind

STYLE = {"completed": "-", "pruned": "--", "diverged": ":", "error": ":", "interrupted": "-."}
DPI = 110


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    _plt().close(fig)
    return path


def _trial_colors(trials):
    """Colour per trial id by its best val/ppl (viridis, low = dark), and the colour bar's mappable."""
    plt = _plt()
    from matplotlib.colors import Normalize

    best = trials.set_index("trial_id")["best_val_ppl"].astype(float)
    norm = Normalize(best.min(), best.max() if best.max() > best.min() else best.min() + 1)
    cmap = plt.get_cmap("viridis")
    colors = {t: cmap(norm(v)) if not math.isnan(v) else "grey" for t, v in best.items()}
    return colors, plt.cm.ScalarMappable(norm=norm, cmap=cmap)


def _status_legend(ax, statuses, best_label: str | None) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color="black", linestyle=STYLE.get(s, "-"), label=s) for s in statuses]
    if best_label:
        handles.append(Line2D([], [], color="crimson", linewidth=2.5, label=best_label))
    ax.legend(handles=handles, title="trial status", fontsize=8, title_fontsize=8, loc="best")


def _line_style(trial_id, best, colors) -> dict:
    """The best completed trial stands out in bold crimson; the others take their colour-bar colour."""
    if trial_id == best:
        return dict(color="crimson", linewidth=2.5, zorder=3)
    return dict(color=colors.get(trial_id, "grey"), linewidth=1.2, alpha=0.8)


def _per_trial(trials):
    """What every per-trial line plot needs: colour per trial, the colour bar's mappable, status per trial and the
    best completed trial."""
    colors, mappable = _trial_colors(trials)
    return colors, mappable, trials.set_index("trial_id")["status"].to_dict(), _best_trial(trials)


def _per_trial_key(fig, legend_ax, axes, mappable, status, best, trials) -> None:
    """The status legend (with the best trial's name) on `legend_ax` and one colour bar for `axes`."""
    from ctkd_tune.search.results import display_name

    rows = trials[trials["trial_id"] == best].to_dict("records") if best else []
    label = f"best completed trial {display_name(rows[0]) if rows else best}" if best else None
    _status_legend(legend_ax, sorted(set(status.values())), label)
    fig.colorbar(mappable, ax=axes, label="trial's best val/ppl (lower is better)")


def trajectories(curves, trials, path: Path) -> Path | str:
    """τ and λ against the training step, one line per trial (at each evaluation the trial reported)."""
    if not len(curves) or "ctkd/temperature" not in curves:
        return "no curves.parquet rows: no temperature trajectories"
    colors, mappable, status, best = _per_trial(trials)
    fig, (ax_t, ax_l) = _plt().subplots(2, 1, figsize=(9, 7), sharex=True)
    for trial_id, c in curves.sort_values("step").groupby("trial_id", sort=False):
        style = _line_style(trial_id, best, colors)
        ls = STYLE.get(status.get(trial_id), "-")
        ax_t.plot(c["step"], c["ctkd/temperature"], ls, marker=".", **style)
        if "ctkd/lambda" in c:
            ax_l.plot(c["step"], c["ctkd/lambda"], ls, marker=".", **style)
    ax_t.set(ylabel="temperature τ (mean over tokens)", title="Temperature and λ per search trial")
    ax_l.set(xlabel="training step", ylabel="λ (gradient-reversal strength)")
    _per_trial_key(fig, ax_t, [ax_t, ax_l], mappable, status, best, trials)
    for ax in (ax_t, ax_l):
        ax.grid(alpha=0.3)
    return _save(fig, path)


def ppl_curves(curves, trials, path: Path) -> Path | str:
    """Held-out perplexity against the step, one line per trial (log scale)."""
    if not len(curves) or "val/ppl" not in curves:
        return "no curves.parquet rows: no val/ppl curves"
    colors, mappable, status, best = _per_trial(trials)
    fig, ax = _plt().subplots(figsize=(9, 5))
    for trial_id, c in curves[curves["status"] != "diverged"].sort_values("step").groupby("trial_id", sort=False):
        style = _line_style(trial_id, best, colors)
        ax.plot(c["step"], c["val/ppl"], STYLE.get(status.get(trial_id), "-"), marker=".", **style)
    ax.set(yscale="log", xlabel="training step", ylabel="val/ppl (held-out perplexity, log scale)",
           title="Held-out perplexity per search trial")
    _plain_log_ticks(ax)
    ax.grid(alpha=0.3, which="both")
    _per_trial_key(fig, ax, ax, mappable, status, best, trials)
    return _save(fig, path)


def search_progress(trials, curves, path: Path) -> Path | str:
    """Best completed val/ppl so far against the training steps the whole search had spent (all trials)."""
    from ctkd_tune.search.efficiency import search_progress as progress_table

    if not len(curves) or "reported_at" not in curves:
        return "curves.parquet has no report times (a search from an older ctkd-tune): no progress plot"
    progress = progress_table(trials, curves)
    if progress["best_so_far"].isna().all():
        return "no trial completed: no progress plot"
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    best = progress[progress["best_so_far"].notna()]
    ax.step(best["steps_spent"], best["best_so_far"], where="post", color="crimson", linewidth=2,
            label="best completed val/ppl so far")
    marks = {"completed": ("o", "tab:blue"), "pruned": ("x", "grey"), "diverged": ("v", "black")}
    for status, (marker, color) in marks.items():
        rows = progress[(progress["status"] == status) & progress["final_val_ppl"].notna()]
        if len(rows):
            label = "pruned (val/ppl when stopped)" if status == "pruned" else status
            ax.scatter(rows["steps_spent"], rows["final_val_ppl"], marker=marker, color=color, label=label, zorder=3)
    ax.set(yscale="log", xlabel="training steps spent by the search (all trials, in the order they ended)",
           ylabel="val/ppl (log scale)", title="Search progress")
    _plain_log_ticks(ax)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def knobs(trials, params: list[str], path: Path) -> Path | str:
    """Final val/ppl against each searched knob: scatter for numbers, jittered strips for categories."""
    import numpy as np

    params = [p for p in params if trials[p].dropna().astype(str).nunique() > 1]  # e.g. gamma, if no trial used exp
    if not params:
        return "no searched knob took more than one value across the trials: no knob plot"
    plt = _plt()
    ncols = min(3, len(params))
    nrows = math.ceil(len(params) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.3 * ncols, 3.4 * nrows), squeeze=False)
    done = trials["status"] == "completed"
    rng = np.random.default_rng(0)
    for ax, param in zip(axes.flat, params):
        values = trials[param]
        categorical = values.dropna().map(lambda v: isinstance(v, (str, bool))).any()
        if categorical:
            cats = sorted(values.dropna().astype(str).unique())
            x = values.astype(str).map({c: i for i, c in enumerate(cats)}).astype(float)
            x = x + rng.uniform(-0.15, 0.15, len(x))
            ax.set_xticks(range(len(cats)), cats)
            ax.set_xlim(-0.5, len(cats) - 0.5)
        else:
            x = values.astype(float)
        ax.scatter(x[done], trials.loc[done, "final_val_ppl"], color="tab:blue", label="completed: final val/ppl",
                   edgecolor="black", linewidth=0.5, zorder=3)
        ax.scatter(x[~done], trials.loc[~done, "best_val_ppl"], color="grey", marker="x",
                   label="stopped early: best val/ppl so far")
        ax.set(xlabel=param, ylabel="val/ppl (perplexity)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(params):]:
        ax.set_visible(False)
    fig.suptitle("Final val/ppl against each searched knob (one point per trial)")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="upper center", ncols=2, fontsize=9,
               bbox_to_anchor=(0.5, 0.965))
    return _save(fig, path)


def importance(importances: dict[str, float], n_trials: int, path: Path) -> Path:
    """Horizontal bars of Optuna's parameter importances."""
    plt = _plt()
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(names) + 1.5))
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set(xlabel="importance (PED-ANOVA, normalised to sum 1)",
           title=f"Hyperparameter importance for val/ppl ({n_trials} completed trials)")
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)


def validation_arms(runs, arms, target: dict[str, Any], path: Path) -> Path:
    """Final val/ppl of every validation run, box and points per arm; the target line; PASS/fail in the labels."""
    import numpy as np

    plt = _plt()
    order = list(arms["arm"])
    fig, ax = plt.subplots(figsize=(max(7.0, 1.3 * len(order)), 5))
    data = [runs.loc[(runs["arm"] == a) & runs["final_val_ppl"].notna(), "final_val_ppl"].astype(float)
            for a in order]
    ax.boxplot([d if len(d) else [np.nan] for d in data], positions=range(len(order)), widths=0.5,
               showfliers=False)
    rng = np.random.default_rng(0)
    for i, d in enumerate(data):
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(d)), d, zorder=3, color="tab:blue", edgecolor="black",
                   linewidth=0.5, label="one seed" if i == 0 else None)
    passes = dict(zip(arms["arm"], arms["passes"]))
    ax.set_xticks(range(len(order)), [f"{a}\n{'PASS' if passes[a] else 'fail'}" for a in order])
    for tick, a in zip(ax.get_xticklabels(), order):
        tick.set_color("green" if passes[a] else "firebrick")
    level, label = target.get("value"), f"target {target.get('value')}"
    if level is None:
        level = arms.set_index("arm")["ppl_mean"].get(target.get("vs"))
        label = f"target: {target.get('vs')} mean {level:.4g}" if level is not None else ""
    values = [v for d in data for v in d]
    if level is not None and not math.isnan(level) and values:
        lo, hi = min(values), max(values)
        if level <= hi + (hi - lo + 1):  # close enough to show without squashing the arms
            ax.axhline(level, color="firebrick", linestyle="--", label=label)
        else:  # far above every run: say so instead of shrinking the boxes to a line
            ax.plot([], [], color="firebrick", linestyle="--", label=f"{label} (above the chart)")
    ax.set(xlabel="arm (and its verdict)", ylabel="final val/ppl (held-out perplexity)",
           title="Validation: final val/ppl per arm, one point per seed")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return _save(fig, path)


def validation_temperature(vcurves, arms, path: Path) -> Path | str:
    """Temperature against the step per validation arm: mean over seeds, band = min..max over seeds."""
    if vcurves is None or not len(vcurves):
        return "no validation_curves.parquet: no validation temperature plot"
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 5))
    for i, arm in enumerate(arms["arm"]):
        c = vcurves[vcurves["arm"] == arm].groupby("step")["ctkd/temperature"].agg(["mean", "min", "max"])
        if not len(c):
            continue
        kind = arms["kind"].iloc[i]
        line, = ax.plot(c.index, c["mean"], label=f"{arm} ({kind})", color=plt.get_cmap("tab10")(i % 10),
                        linestyle={ArmKind.SEARCH: "-", ArmKind.FALLBACK: "--"}.get(kind, ":"), linewidth=1.8)
        ax.fill_between(c.index, c["min"], c["max"], color=line.get_color(), alpha=0.15)
    ax.set(xlabel="training step", ylabel="temperature τ (mean over tokens)",
           title="Validation: temperature per arm (line: mean over seeds, band: min–max)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="arm")
    return _save(fig, path)


def _plain_log_ticks(ax) -> None:
    """Log-scale tick labels as plain numbers (250, 300), not 2.5×10²."""
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)


def _best_trial(trials) -> str | None:
    done = trials[(trials["status"] == "completed") & trials["final_val_ppl"].notna()]
    return done.sort_values("final_val_ppl").iloc[0]["trial_id"] if len(done) else None
