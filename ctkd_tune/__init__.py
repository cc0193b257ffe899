"""ctkd-tune: find and prove the settings that make Curriculum Temperature Knowledge Distillation work for LLMs.

Public API (everything else is internal):

    from ctkd_tune import load_config, distill
    cfg = load_config(preset="tiny", overrides=["temperature.mode=ctkd"])
    result = distill(cfg)                 # RunResult(summary, history, student)
    print(result.summary["final_val_ppl"], result.summary["final_temperature"])
"""

import importlib

from ctkd_tune.config import PRESETS, Config, ConfigError, dump_yaml, load_config

# The rest imports torch: loaded on first use (PEP 562), so `ctkd-tune --help` and the config tools start in well
# under a second. No public name is also a submodule's name, so the import system never rebinds one of them.
_LAZY = {
    "ctkd_tune.core.ctkd": ("CTKDTemperature", "CTKDTemperaturePredictor", "GradientReversalFunction",
                            "GradientReversalLayer", "LAMBDA_SCHEDULES", "get_lambda", "get_lambda_exp", "lambda_at"),
    "ctkd_tune.core.losses": ("kd_loss",),
    "ctkd_tune.run.loop": ("RunResult", "distill"),
    "ctkd_tune.run.prepare": ("Setup", "prepare"),
}
_HOME = {name: module for module, names in _LAZY.items() for name in names}


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'ctkd_tune' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME[name]), name)
    globals()[name] = value
    return value


__all__ = [
    "Config", "ConfigError", "PRESETS", "load_config", "dump_yaml",
    "GradientReversalFunction", "GradientReversalLayer", "CTKDTemperature", "CTKDTemperaturePredictor",
    "get_lambda", "get_lambda_exp", "LAMBDA_SCHEDULES", "lambda_at", "kd_loss",
    "distill", "prepare", "Setup", "RunResult",
]
__version__ = "0.1.0"
