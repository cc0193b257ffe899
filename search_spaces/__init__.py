"""Search spaces shipped with ctkd-tune: data, loaded by name like a user's own (see `ctkd_tune.search.spaces`).

    ctkd-tune search                                        # search_spaces.default:default_space
    ctkd-tune search --space search_spaces.default:curriculum_space
    ctkd-tune search --space search_spaces/example.yaml

A space is a define-by-run Optuna function that only calls `trial.suggest_*`, with the config's dotted keys as
parameter names; the machinery that loads and checks spaces lives in `ctkd_tune.search.spaces`.
"""
