"""Shared test set-up: one embedded-model cache for the whole session, quiet transformers."""

import os
from pathlib import Path

# Built once (the tiny teacher takes seconds), reused by every test and by later local runs; git-ignored.
os.environ.setdefault("CTKD_TUNE_CACHE", str(Path(__file__).resolve().parent.parent / ".cache" / "test-cache"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

# Tiny models gain nothing from a second thread, and on a shared machine two threads can run ~20x slower.
torch.set_num_threads(1)

hf_logging.disable_progress_bar()
