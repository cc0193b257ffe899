"""Config: defaults, presets, YAML round trip, --set overrides, and every validation error naming its field."""

import pytest

from ctkd_tune.config import PRESETS, Config, ConfigError, dump_yaml, load_config


def test_defaults_follow_the_plan():
    cfg = Config()
    t, s = cfg.temperature, cfg.schedule
    assert (t.mode, t.granularity, t.tau_min, t.tau_max, t.tau_init) == ("ctkd", "global", 1.0, 5.0, 2.0)
    assert (s.type, s.lambda_max, s.warmup_ratio) == ("cosine", 1.0, 0.2)
    assert t.optimizer == "sgd"  # Adam would cancel the λ curriculum


def test_yaml_round_trip(tmp_path):
    cfg = load_config(preset="tiny", overrides=["temperature.tau_max=4.5", "schedule.type=exp"])
    path = tmp_path / "run.yaml"
    dump_yaml(cfg, path, header="ctkd-tune distill --config run.yaml --output runs/x")
    assert path.read_text().startswith("# ctkd-tune distill")
    assert load_config(path) == cfg


def test_precedence_preset_then_file_then_set(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  steps: 7\n  batch_size: 3\n")
    cfg = load_config(path, preset="tiny", overrides=["train.steps=9"])
    assert cfg.train.steps == 9 and cfg.train.batch_size == 3
    assert cfg.model.teacher == PRESETS["tiny"]["model.teacher"]


def test_flat_uses_dotted_names():
    flat = Config().flat()
    assert flat["temperature.tau_min"] == 1.0 and flat["schedule.lambda_max"] == 1.0


@pytest.mark.parametrize("override, field", [
    ("temperature.tau_min=5", "temperature.tau_min"),
    ("temperature.tau_min=6", "temperature.tau_min"),
    ("temperature.tau_init=0.5", "temperature.tau_init"),
    ("temperature.tau_init=5.0", "temperature.tau_init"),
    ("schedule.warmup_ratio=1.0", "schedule.warmup_ratio"),
    ("schedule.warmup_ratio=-0.1", "schedule.warmup_ratio"),
    ("schedule.lambda_max=-0.5", "schedule.lambda_max"),
    ("temperature.mode=adversarial", "temperature.mode"),
    ("schedule.type=step", "schedule.type"),
    ("temperature.granularity=sample", "temperature.granularity"),
    ("train.steps=0", "train.steps"),
    ("train.steps=many", "train.steps"),
    ("train.stepz=10", "train.stepz"),
    ("optimizer.lr=1", "optimizer"),
    ("data.val_fraction=1.5", "data.val_fraction"),
    ("train.precision=fp16", "train.precision"),
    ("loss.divergence=kl", "loss.divergence"),
    ("loss.skew_alpha=0", "loss.skew_alpha"),
    ("loss.skew_alpha=1.0", "loss.skew_alpha"),
    ("loss.jsd_beta=1.5", "loss.jsd_beta"),
    ("loss.jsd_beta=-0.5", "loss.jsd_beta"),
])
def test_invalid_values_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(overrides=[override])


def test_malformed_yaml_is_a_config_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  steps: [1, 2\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_config(path)


def test_missing_file_and_unknown_preset():
    with pytest.raises(ConfigError, match="not found"):
        load_config("/no/such/config.yaml")
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config(preset="huge")


def test_yaml_uses_safe_load(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("train: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_config(path)


def test_divergence_defaults_and_choices():
    lo = Config().loss
    assert (lo.divergence, lo.skew_alpha, lo.jsd_beta) == ("forward_kl", 0.1, 0.5)  # today's loss, the papers' α, β
    for name in ("forward_kl", "reverse_kl", "skew_kl", "jsd"):
        assert load_config(overrides=[f"loss.divergence={name}"]).loss.divergence == name
    with pytest.raises(ConfigError, match="loss.divergence must be one of forward_kl, reverse_kl, skew_kl, jsd"):
        load_config(overrides=["loss.divergence=JSD"])


def test_fused_true_takes_instruction_data_too():
    assert load_config(preset="tiny", overrides=["loss.fused=true", "data.format=chat"]).loss.fused == "true"


def _literal_fields():
    import dataclasses
    from typing import Literal, get_args, get_origin, get_type_hints

    for section in dataclasses.fields(Config):
        hints = get_type_hints(section.default_factory)
        for f in dataclasses.fields(section.default_factory):
            if get_origin(hints[f.name]) is Literal:
                yield f"{section.name}.{f.name}", get_args(hints[f.name])


def test_the_mode_like_fields_are_literals_and_their_tuples_are_derived():
    from ctkd_tune import config

    fields = dict(_literal_fields())
    assert fields == {
        "data.format": config.DATA_FORMATS, "train.device": config.DEVICES, "train.precision": config.PRECISIONS,
        "loss.fused": config.FUSED_CHOICES, "loss.divergence": config.DIVERGENCES,
        "temperature.mode": config.TEMPERATURE_MODES, "temperature.granularity": config.GRANULARITIES,
        "temperature.optimizer": config.TEMPERATURE_OPTIMIZERS, "schedule.type": config.SCHEDULE_TYPES,
        "checks.thresholds": config.CHECK_THRESHOLDS}
    assert set(config.LEARNED_MODES) <= set(config.TEMPERATURE_MODES)


@pytest.mark.parametrize("name, allowed", list(_literal_fields()))
def test_every_literal_field_accepts_its_choices_and_names_itself_otherwise(name, allowed):
    for value in allowed:
        assert load_config(overrides=[f"{name}={value}"]).flat()[name] == value
    with pytest.raises(ConfigError, match=f"^{name.replace('.', r'[.]')} must be one of {', '.join(allowed)}; "
                                          "got 'bogus'$"):
        load_config(overrides=[f"{name}=bogus"])
