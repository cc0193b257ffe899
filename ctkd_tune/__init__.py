"""ctkd-tune: find and prove the settings that make Curriculum Temperature Knowledge Distillation work for LLMs.

Public API (everything else is internal):

    from ctkd_tune import load_config, distill
    cfg = load_config(preset="tiny", overrides=["temperature.mode=ctkd"])
    result = distill(cfg)                 # RunResult(summary, history, student)
    print(result.summary["final_val_ppl"], result.summary["final_temperature"])
"""

from ctkd_tune.config import PRESETS, Config, ConfigError, dump_yaml, load_config

# The rest imports torch: loaded on first use, so `ctkd-tune --help` and the config tools start in well under
# a second (PEP 562 module __getattr__).
_LAZY = {
    "ctkd_tune.ctkd": ("CTKDTemperature", "CTKDTemperaturePredictor", "GradientReversalFunction",
                       "GradientReversalLayer", "LAMBDA_SCHEDULES", "get_lambda", "get_lambda_exp", "lambda_at"),
    "ctkd_tune.losses": ("kd_loss",),
    "ctkd_tune.distill": ("RunResult", "Setup", "distill", "prepare"),
}


def __getattr__(name: str):
    import importlib

    for module, names in _LAZY.items():
        if name in names:
            return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module 'ctkd_tune' has no attribute {name!r}")


__all__ = [
    "Config", "ConfigError", "PRESETS", "load_config", "dump_yaml",
    "GradientReversalFunction", "GradientReversalLayer", "CTKDTemperature", "CTKDTemperaturePredictor",
    "get_lambda", "get_lambda_exp", "LAMBDA_SCHEDULES", "lambda_at", "kd_loss",
    "distill", "prepare", "Setup", "RunResult",
]
__version__ = "0.1.0"
