"""Search spaces: every shipped space yields valid configs; every kind of bad space is one ConfigError before Ray.

Run: pytest tests/test_search_spaces.py   (no Ray, no model: seconds)
"""

from __future__ import annotations

import optuna
import pytest

from ctkd_tune.cli import main
from ctkd_tune.config import ConfigError, load_config
from ctkd_tune.search.arms import FALLBACK_C, KNOWN_POINTS, RECOMMENDED
from ctkd_tune.search.spaces import YamlSpace, check_space, load_space, trial_config
from search_spaces.default import TAU_MARGIN

SHIPPED = [None, "search_spaces.default:default_space", "search_spaces.default:curriculum_space",
           "search_spaces.default:divergence_space", "search_spaces/example.yaml"]
BASE = load_config(preset="tiny")


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch, request):
    monkeypatch.chdir(request.config.rootpath)  # the example YAML is named relative to the repository


@pytest.mark.parametrize("spec", SHIPPED)
def test_shipped_space_samples_are_valid_configs(spec):
    space = load_space(spec)
    info = check_space(space, BASE, str(spec))
    assert info.max_warmup_ratio == pytest.approx(0.4)
    assert len(info.points) == 2 and info.dropped_points == 0  # both known points lie inside every shipped space
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=1))
    for _ in range(30):
        trial = study.ask()
        space(trial)
        cfg = trial_config(BASE.to_dict(), trial.params)  # raises on any invalid sample
        assert cfg.temperature.tau_min < cfg.temperature.tau_init < cfg.temperature.tau_max
        study.tell(trial, cfg.temperature.tau_max)


def test_default_space_keeps_its_margins_and_conditional_gamma():
    space = load_space(None)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_exp = seen_other = False
    for _ in range(200):
        trial = study.ask()
        space(trial)
        p = trial.params
        assert p["temperature.tau_max"] >= p["temperature.tau_min"] + TAU_MARGIN - 1e-9
        assert p["temperature.tau_min"] < p["temperature.tau_init"] < p["temperature.tau_max"]
        assert ("schedule.gamma" in p) == (p["schedule.type"] == "exp")
        seen_exp |= p["schedule.type"] == "exp"
        seen_other |= p["schedule.type"] != "exp"
        study.tell(trial, 0.0)
    assert seen_exp and seen_other


def test_known_points_are_the_plan():
    assert RECOMMENDED == {"temperature.tau_min": 1.0, "temperature.tau_max": 5.0, "temperature.tau_init": 2.0,
                           "schedule.lambda_max": 1.0, "schedule.warmup_ratio": 0.2, "schedule.type": "cosine",
                           "temperature.granularity": "global", "temperature.lr": 0.05,
                           "loss.divergence": "forward_kl"}
    assert FALLBACK_C == {**RECOMMENDED, "schedule.lambda_max": 0.5, "schedule.warmup_ratio": 0.4}
    assert KNOWN_POINTS == [RECOMMENDED, FALLBACK_C]


def test_points_outside_a_space_are_dropped(tmp_path):
    path = tmp_path / "narrow.yaml"
    path.write_text("schedule.lambda_max: {type: float, low: 0.6, high: 2.0}\n")
    info = check_space(load_space(str(path)), BASE, "narrow")
    assert info.points == [{"schedule.lambda_max": 1.0}] and info.dropped_points == 1  # fallback C has 0.5


def _bad_module(tmp_path, monkeypatch, source: str, case: str) -> str:
    name = "badspace_" + "".join(c if c.isalnum() else "_" for c in case)  # a fresh module per case
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


BAD_YAML = {
    "not yaml": "a: [1, 2\n",
    "not a mapping": "- 1\n- 2\n",
    "unknown type": "train.lr: {type: normal, low: 1, high: 2}\n",
    "unknown field": "train.lr: {type: float, low: 1.0e-3, high: 2.0e-3, scale: 3}\n",
    "low above high": "train.lr: {type: float, low: 0.1, high: 0.01}\n",
    "log with zero": "train.lr: {type: float, low: 0, high: 0.01, log: true}\n",
    "empty choices": "schedule.type: {type: categorical, choices: []}\n",
    "unknown config key": "train.learning_rate: {type: float, low: 1.0e-3, high: 2.0e-3}\n",
    "bad section": "trainer.lr: {type: float, low: 1.0e-3, high: 2.0e-3}\n",
    "invalid choice": "schedule.type: {type: categorical, choices: [cosine, sawtooth]}\n",
    "overlapping tau ranges": "temperature.tau_min: {type: float, low: 1, high: 4}\n"
                              "temperature.tau_max: {type: float, low: 3, high: 6}\n"
                              "temperature.tau_init: {type: float, low: 4.1, high: 4.2}\n",
}


@pytest.mark.parametrize("case", sorted(BAD_YAML))
def test_bad_yaml_space_is_one_config_error(case, tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(BAD_YAML[case])
    with pytest.raises(ConfigError) as err:
        check_space(load_space(str(path)), BASE, str(path))
    assert "\n" not in str(err.value)


BAD_PYTHON = {
    "import error": ("import not_a_module\ndef space(trial):\n    pass\n", "cannot import"),
    "no such function": ("def other(trial):\n    pass\n", "no attribute"),
    "not callable": ("space = 3\n", "not callable"),
    "raises": ("def space(trial):\n    raise RuntimeError('boom')\n", "boom"),
    "low above high": ("def space(trial):\n    trial.suggest_float('train.lr', 1.0, 0.1)\n", "failed"),
    "tau_min above tau_max": ("def space(trial):\n"
                              "    trial.suggest_float('temperature.tau_min', 1.0, 6.0)\n"
                              "    trial.suggest_float('temperature.tau_max', 4.0, 8.0)\n", "tau_min"),
    "unknown key": ("def space(trial):\n    trial.suggest_float('temperature.tau_mni', 1.0, 2.0)\n", "unknown"),
    "slash in a name": ("def space(trial):\n    trial.suggest_float('temperature/tau_min', 1.0, 2.0)\n", "'/'"),
    "returns a list": ("def space(trial):\n    trial.suggest_float('train.lr', 1e-3, 2e-3)\n    return [1]\n",
                       "must return"),
    "suggests nothing": ("def space(trial):\n    return None\n", "no parameters"),
}


@pytest.mark.parametrize("case", sorted(BAD_PYTHON))
def test_bad_python_space_is_one_config_error(case, tmp_path, monkeypatch):
    source, message = BAD_PYTHON[case]
    module = _bad_module(tmp_path, monkeypatch, source, case)
    with pytest.raises(ConfigError, match=message) as err:
        check_space(load_space(f"{module}:space"), BASE, case)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("spec", ["no_colon", "missing.yaml", "nope.module:f", "missing.py:f"])
def test_bad_space_names(spec):
    with pytest.raises(ConfigError):
        load_space(spec)


def test_yaml_numbers_written_as_1e_minus_3_are_numbers(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("train.lr: {type: float, low: 1e-3, high: 2e-3, log: true}\n"
                    "train.batch_size: {type: int, low: 4, high: 8}\n")
    space = load_space(str(path))
    assert isinstance(space, YamlSpace) and space.params["train.lr"]["low"] == 0.001
    assert check_space(space, BASE, "s").params == ["train.batch_size", "train.lr"]


def test_cli_bad_space_fails_before_ray_starts(tmp_path, capsys):
    import ray

    path = tmp_path / "bad.yaml"
    path.write_text("temperature.tau_min: {type: float, low: 3, high: 9}\n")  # reaches tau_max = 5
    code = main(["search", "--preset", "tiny", "--space", str(path), "--results-dir", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("ctkd-tune: error: search space") and err.count("\n") == 1
    assert not ray.is_initialized() and not (tmp_path / "results").exists()


def test_cli_search_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    text = capsys.readouterr().out
    for flag in ("--config", "--preset", "--set", "--space", "--num-samples", "--name", "--max-concurrent",
                 "--cpus-per-trial", "--gpus-per-trial", "--resume", "--address", "--storage-path",
                 "--results-dir", "--seed", "--dashboard-host"):
        assert flag in text


def test_curriculum_space_searches_the_temperature_lr_and_keeps_the_plans_points_exact():
    info = check_space(load_space("search_spaces.default:curriculum_space"), BASE, "curriculum")
    assert "temperature.lr" in info.params  # lr 0.05 pinned in the known points
    assert info.points == [{k: v for k, v in p.items() if k != "loss.divergence"} for p in (RECOMMENDED, FALLBACK_C)]
    default = check_space(load_space(None), BASE, "default")
    assert "temperature.lr" not in default.params
    assert default.points == [{k: v for k, v in p.items() if k not in ("temperature.lr", "loss.divergence")}
                              for p in KNOWN_POINTS]


def test_divergence_space_suggests_alpha_and_beta_only_for_their_divergence():
    from ctkd_tune.config import DIVERGENCES

    space = load_space("search_spaces.default:divergence_space")
    info = check_space(space, BASE, "divergence")
    assert {"loss.divergence", "loss.skew_alpha", "loss.jsd_beta"} <= set(info.params)
    # the known points run first at forward KL: the plan's configurations, not a random divergence
    assert info.points == [{k: v for k, v in p.items() if k != "temperature.lr"} for p in KNOWN_POINTS]
    assert all(p["loss.divergence"] == "forward_kl" for p in info.points)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(200):
        trial = study.ask()
        space(trial)
        p = trial.params
        seen.add(p["loss.divergence"])
        assert ("loss.skew_alpha" in p) == (p["loss.divergence"] == "skew_kl")
        assert ("loss.jsd_beta" in p) == (p["loss.divergence"] == "jsd")
        cfg = trial_config(BASE.to_dict(), p)
        assert 0 < cfg.loss.skew_alpha < 1 and 0 < cfg.loss.jsd_beta < 1
        study.tell(trial, 0.0)
    assert seen == set(DIVERGENCES)
