"""ctkd-tune's on-disk cache: where it lives, and entries built once even when many processes want them.

Tokenizers, the embedded teachers, token streams and stored teacher outputs all live under `cache_dir()`.
Concurrent builders (Ray trials starting together) serialise on a file lock, and an entry appears atomically:

    with file_lock(path.with_suffix(".lock")): ...          # one process at a time
    build_once(cache_dir() / "thing", lambda tmp: ...)     # whole or absent, built by one process
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator


def cache_dir() -> Path:
    """Root of ctkd-tune's caches: $CTKD_TUNE_CACHE if set, else ~/.cache/ctkd-tune."""
    return Path(os.environ.get("CTKD_TUNE_CACHE") or Path.home() / ".cache" / "ctkd-tune")


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` so concurrent processes (Ray trials) build an entry only once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_once(target: Path, build: Callable[[Path], None], ready: Callable[[Path], bool] = Path.is_dir) -> Path:
    """Make directory `target` with `build(tmp_dir)` unless `ready(target)`; a crash never leaves a half entry."""
    if ready(target):
        return target
    with file_lock(target.with_name(target.name + ".lock")):
        if ready(target):  # another process built it while we waited for the lock
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            build(tmp)
            if target.exists():  # stale or forced: move the old entry aside, since rename won't replace a full dir
                old = target.with_name(f".{target.name}.old.{os.getpid()}")
                os.replace(target, old)
                shutil.rmtree(old)
            tmp.chmod(0o755)  # mkdtemp makes it private (0o700); a cache entry should read like any dir
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
