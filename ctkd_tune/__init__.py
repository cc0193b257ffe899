"""ctkd-tune: find and prove the settings that make Curriculum Temperature Knowledge Distillation work for LLMs.

Public API (everything else is internal):

    from ctkd_tune import load_config, distill
    cfg = load_config(preset="tiny", overrides=["temperature.mode=ctkd"])
    result = distill(cfg)                 # RunResult(summary, history, student)
    print(result.summary["final_val_ppl"], result.summary["final_temperature"])
"""

import importlib
import sys
import types

from ctkd_tune.config import PRESETS, Config, ConfigError, dump_yaml, load_config

# The rest imports torch: loaded on first use, so `ctkd-tune --help` and the config tools start in well under
# a second. A module class rather than a module-level __getattr__: importing the submodule ctkd_tune.run.loop binds
# it as the package attribute `distill`, which would hide the function `distill` of the public API.
_LAZY = {
    "ctkd_tune.core.ctkd": ("CTKDTemperature", "CTKDTemperaturePredictor", "GradientReversalFunction",
                       "GradientReversalLayer", "LAMBDA_SCHEDULES", "get_lambda", "get_lambda_exp", "lambda_at"),
    "ctkd_tune.core.losses": ("kd_loss",),
    "ctkd_tune.run.loop": ("RunResult", "Setup", "distill", "prepare"),
}
_HOME = {name: module for module, names in _LAZY.items() for name in names}


class _Package(types.ModuleType):
    def __getattr__(self, name: str):
        if name not in _HOME:
            raise AttributeError(f"module 'ctkd_tune' has no attribute {name!r}")
        value = getattr(importlib.import_module(_HOME[name]), name)
        super().__setattr__(name, value)
        return value

    def __setattr__(self, name: str, value) -> None:
        if name in _HOME and isinstance(value, types.ModuleType):
            return  # the import system binding submodule `distill`: the public name stays the function
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = [
    "Config", "ConfigError", "PRESETS", "load_config", "dump_yaml",
    "GradientReversalFunction", "GradientReversalLayer", "CTKDTemperature", "CTKDTemperaturePredictor",
    "get_lambda", "get_lambda_exp", "LAMBDA_SCHEDULES", "lambda_at", "kd_loss",
    "distill", "prepare", "Setup", "RunResult",
]
__version__ = "0.1.0"
