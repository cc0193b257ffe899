"""Ray Tune trainables: thin adapters from Ray Tune to the `distill` loop. Ray is imported here and in
`ctkd_tune/search/` only (tests/test_layout.py checks it); `ctkd-tune distill` needs neither.

    from trainables import train_ctkd      # tune.with_parameters(train_ctkd, base=cfg.to_dict(), stored=FOLDER)
"""

from trainables.distill_trainable import train_ctkd

__all__ = ["train_ctkd"]
