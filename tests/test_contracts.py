"""Contract tests: every name the config accepts has exactly one implementation, and the default search space
offers exactly the names the config accepts.

Run: python -m pytest tests/test_contracts.py

Adding a λ schedule, a temperature mode, a granularity or a divergence means adding it to the config's list and
to the one table that implements it; these tests fail until both (and the default search space) agree.
"""

import pytest

from ctkd_tune.config import GRANULARITIES, LEARNED_MODES, SCHEDULE_TYPES, TEMPERATURE_MODES
from ctkd_tune.core.ctkd import LAMBDA_SCHEDULES
from ctkd_tune.core.temperature import LEARNED, SET


class RecordingTrial:
    """Stands in for an Optuna trial: records every categorical's choices and answers with the first choice."""

    def __init__(self):
        self.choices: dict[str, list] = {}

    def suggest_categorical(self, name, choices):
        self.choices[name] = list(choices)
        return choices[0]

    def suggest_float(self, name, low, high, **kwargs):
        return low

    def suggest_int(self, name, low, high, **kwargs):
        return low


def test_lambda_schedules_are_the_configs_schedule_types():
    assert tuple(LAMBDA_SCHEDULES) == SCHEDULE_TYPES


def test_temperature_modes_are_implemented_once():
    # A mode is either set (no parameters) or learned (a module per granularity), never both, never neither.
    assert set(SET).isdisjoint(LEARNED_MODES)
    assert set(SET) | set(LEARNED_MODES) == set(TEMPERATURE_MODES)
    assert tuple(LEARNED) == GRANULARITIES


def test_the_default_space_offers_exactly_the_configs_names():
    from search_spaces.default import default_space

    trial = RecordingTrial()
    default_space(trial)
    assert set(trial.choices["schedule.type"]) == set(SCHEDULE_TYPES)
    assert set(trial.choices["temperature.granularity"]) == set(GRANULARITIES)


def test_divergences_are_the_configs_divergences():
    from ctkd_tune.config import DIVERGENCES
    from ctkd_tune.core.losses import DIVERGENCES as KERNELS, WORK_BUFFERS

    assert tuple(KERNELS) == DIVERGENCES and set(WORK_BUFFERS) == set(DIVERGENCES)


def test_the_divergence_space_offers_exactly_the_configs_divergences():
    from ctkd_tune.config import DIVERGENCES
    from search_spaces.default import divergence_space

    trial = RecordingTrial()
    divergence_space(trial)
    assert trial.choices["loss.divergence"] == list(DIVERGENCES)


def test_validation_curves_keep_a_subset_of_the_searchs_curve_metrics():
    from ctkd_tune.search.results import CURVE_METRICS
    from ctkd_tune.validate.runs import CURVE_KEYS

    assert set(CURVE_KEYS) <= set(CURVE_METRICS) and "val/ppl" in CURVE_KEYS


@pytest.mark.parametrize("value, expected", [(1, True), (2.5, True), (float("nan"), False), (float("inf"), False),
                                             (None, False), ("3", False), (True, False)])
def test_finite_accepts_real_finite_numbers_only(value, expected):
    from ctkd_tune.values import finite

    assert finite(value) is expected


def test_error_line_names_the_exception_not_the_traceback():
    from ctkd_tune.values import error_line

    class TaskError(Exception):  # as Ray's: the worker's exception as .cause, a traceback as its text
        def __init__(self, cause):
            super().__init__("ray::trial()\n  File \"x.py\", line 1\n    raise\nValueError: tau_min must be > 0")
            self.cause = cause

    assert error_line(ValueError("bad α\nmore detail")) == "bad α"
    assert error_line(TaskError(ValueError("tau_min must be > 0")), with_type=True) == "ValueError: tau_min must be > 0"
    assert error_line(Exception("Traceback (most recent call last):\n  File \"x\"\nKeyError: 'k'")) == "KeyError: 'k'"
    assert error_line(RuntimeError()) == "RuntimeError"


def test_the_validate_wing_imports_no_ray_itself():
    """validate reaches Ray only through search.cluster (the search wing is the only one that imports Ray)."""
    import ast
    from pathlib import Path

    import ctkd_tune.validate

    found = []
    for path in sorted(Path(ctkd_tune.validate.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{path.name}: {n}" for n in names if n == "ray" or n.startswith("ray.")]
    assert found == []
