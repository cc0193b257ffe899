"""Ray Tune trainables: thin adapters from Ray Tune to the `distill` loop (the README's Layout says which modules
import Ray; `ctkd-tune distill` needs none of them).

    from trainables import train_ctkd      # tune.with_parameters(train_ctkd, base=cfg.to_dict(), stored=FOLDER)
"""

from trainables.distill_trainable import train_ctkd

__all__ = ["train_ctkd"]
