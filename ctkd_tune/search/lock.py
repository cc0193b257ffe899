"""One driver per experiment: an exclusive lock on results/NAME/.lock, held while a search runs.

    with experiment_lock(directory, "search"):   # ConfigError naming the holder if another driver has it
        ...

The lock is `flock` on the file, so the kernel releases it however the holder ends (exit, exception, kill -9):
a lock left by a dead driver is never in the way. The file records the holder (pid, host, command, start time)
for the message a second driver gets; it is left in place (removing it would race a driver taking it).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ctkd_tune.config import ConfigError

LOCK_FILE = ".lock"


@contextmanager
def experiment_lock(directory: str | Path, command: str) -> Iterator[None]:
    """Hold results/NAME/.lock for the block; raise ConfigError at once if another process holds it."""
    path = Path(directory) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise ConfigError(f"{path.parent} is in use by another driver ({_describe(handle.read())}): wait for "
                              "it to end, or stop it (Ctrl-C) and continue with --resume") from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock


def _describe(text: str) -> str:
    try:
        holder = json.loads(text)
        return f"`ctkd-tune {holder['command']}`, pid {holder['pid']} on {holder['host']}, since {holder['since']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"
