"""Search: Ray Tune trials while Optuna searches the CTKD knobs. This wing and validate's runner (validate/runs.py,
through search.cluster) import Ray; core, inputs and run never do, so `ctkd-tune distill` runs without it.

    driver.py     `run_search`: the Tuner, its scheduler, searcher and callbacks
    settings.py   `SearchSettings`: the budget and resources of one search; `StudySettings`: what search.json
                  records of them (importable without Ray)
    compat.py     every private Ray / Optuna access, one function each (tests/test_compat.py)
    searcher.py   the Optuna searcher and the callbacks that keep the study and the tables right
    spaces.py     loading and checking a search space; a suggestion → a trial's config
    arms.py       the recommended point and fallbacks A, B and C
    results.py    the Parquet tables: one row per trial, one row per report
    folder.py     results/NAME/: search.json, optuna.db, the tables (write side)
    experiment.py results/NAME/ opened for validate, export and report (read side)
    status.py     the compact table of `status` and the live console
    reporter.py   Tune's side of watching: the live reporter, trial names, per-trial Ray gauges
    names.py, efficiency.py, dryrun.py, submit.py, lock.py, cluster.py   trial names, steps-to-target,
                  --dry-run, Ray Jobs submission, the experiment lock, the local or remote Ray cluster

Ray is imported inside the modules that need it, never by this package's `__init__`, so `search.arms`,
`search.settings` and the table readers load without it.
"""
