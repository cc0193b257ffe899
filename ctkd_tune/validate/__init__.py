"""Validate: the best configurations re-run with several seeds next to the fallbacks, judged honestly.

    driver.py   `run_validation`: the plan (arms × seeds) and its resumable execution
    runs.py     one validation run (a `distill`) as a Ray task (through `search.cluster`), and its rows
    verdict.py  the verdict: paired intervals against fallback A, stability, the target;
                the enums ValidationStatus, ArmKind, Outcome
    table.py    the side-by-side table of the verdict
    stats.py    Student's t, paired intervals, seeds needed (pure Python)
    export.py   the winning configuration as a runnable YAML
    report.py, plots.py   the report (Markdown/HTML) and its figures

Imports: every wing below it; nothing imports it except the CLI. It imports no Ray itself (search.cluster
does, for runs.py); report.py reads the search's optuna.db with Optuna.
"""
