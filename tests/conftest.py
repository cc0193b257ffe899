"""Shared test set-up: one embedded-model cache for the whole session, quiet transformers, one local Ray per module."""

import os
from pathlib import Path

# Built once (the tiny teacher takes seconds), reused by every test and by later local runs; git-ignored.
os.environ.setdefault("CTKD_TUNE_CACHE", str(Path(__file__).resolve().parent.parent / ".cache" / "test-cache"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

# Tiny models gain nothing from a second thread, and on a shared machine two threads can run ~20x slower.
torch.set_num_threads(1)

hf_logging.disable_progress_bar()


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray of 2 CPUs for one test module; yields its GCS address (for drivers run as subprocesses).

    address="local" always starts a fresh one: a search someone runs on the same machine is never joined. A Ray
    that an earlier fixture of the same process left running is reused and left alone.
    """
    ray = pytest.importorskip("ray")
    os.environ["RAY_CHDIR_TO_TRIAL_DIR"] = "0"
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    if started:
        ray.shutdown()
