"""ctkd-tune: find and prove the settings that make Curriculum Temperature Knowledge Distillation work for LLMs.

Public API (everything else is internal):

    from ctkd_tune import load_config, distill
    cfg = load_config(preset="tiny", overrides=["temperature.mode=ctkd"])
    result = distill(cfg)                 # RunResult(summary, history, student)
    print(result.summary["final_val_ppl"], result.summary["final_temperature"])
"""

from ctkd_tune.config import PRESETS, Config, ConfigError, dump_yaml, load_config
from ctkd_tune.ctkd import (CTKDTemperature, CTKDTemperaturePredictor, GradientReversalFunction,
                            GradientReversalLayer, LAMBDA_SCHEDULES, get_lambda, get_lambda_exp, lambda_at)
from ctkd_tune.losses import kd_loss
from ctkd_tune.distill import RunResult, Setup, distill, prepare

__all__ = [
    "Config", "ConfigError", "PRESETS", "load_config", "dump_yaml",
    "GradientReversalFunction", "GradientReversalLayer", "CTKDTemperature", "CTKDTemperaturePredictor",
    "get_lambda", "get_lambda_exp", "LAMBDA_SCHEDULES", "lambda_at", "kd_loss",
    "distill", "prepare", "Setup", "RunResult",
]
__version__ = "0.1.0"
