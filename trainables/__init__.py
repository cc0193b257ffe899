"""Ray Tune trainables: adapters from Ray to the `distill` loop (with `ctkd_tune.search`, the only code importing Ray).

    from trainables import train_ctkd      # tune.with_parameters(train_ctkd, base=cfg.to_dict())
"""

from trainables.distill_trainable import train_ctkd

__all__ = ["train_ctkd"]
