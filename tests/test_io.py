"""`ctkd_tune.io`'s atomic writers, each made to fail half-way through a write: the earlier file stays, byte for byte.

The failure is real, and the same whatever the writer does inside: a child process lowers RLIMIT_FSIZE (the
largest file it may write) below the size of the new content, so the kernel refuses the write that crosses it
(EFBIG) after part of the data is on disk — a disk that fills up mid-write. A writer that opened the
destination in place (`open(path, "w")`) has truncated it by then, and fails here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 64 * 1024  # bytes: the new contents are several times larger, the earlier ones far smaller

CHILD = r"""
import json, random, resource, signal, string, sys
from ctkd_tune import io

writer, path, phase, limit = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
rng = random.Random(0)
letters = lambda k: "".join(rng.choices(string.ascii_letters, k=k))  # random text: compression cannot shrink it
if writer == "torch":
    import torch
small = {"text": lambda: io.atomic_write_text(path, "earlier\n"),
         "json": lambda: io.atomic_write_json(path, {"earlier": [1, 2, 3]}),
         "parquet": lambda: io.atomic_write_parquet(path, [{"step": 1, "val/ppl": 2.5, "note": "earlier"}]),
         "torch": lambda: io.atomic_torch_save(path, {"earlier": torch.arange(3)})}
large = {"text": lambda: io.atomic_write_text(path, letters(1_000_000)),
         "json": lambda: io.atomic_write_json(path, {"rows": [rng.random() for _ in range(100_000)]}),
         "parquet": lambda: io.atomic_write_parquet(path, [{"step": i, "val/ppl": rng.random(), "note": letters(40)}
                                                           for i in range(20_000)]),
         "torch": lambda: io.atomic_torch_save(path, {"weights": torch.randn(250_000)})}
if phase == "earlier":  # a small first version, written without any limit
    small[writer]()
    sys.exit(0)

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an over-size write then fails with EFBIG instead of killing us
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
try:
    large[writer]()
    result = {"type": None}
except BaseException as err:
    result = {"type": type(err).__name__, "oserror": isinstance(err, OSError),
              "filename": getattr(err, "filename", None), "message": str(err)[:200]}
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
print(json.dumps(result))
"""

WRITERS = ("text", "json", "parquet", "torch")


def _child(writer: str, path: Path, phase: str, limit: int = LIMIT) -> dict | None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", CHILD, writer, str(path), phase, str(limit)], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]) if phase == "large" else None


@pytest.mark.parametrize("writer", WRITERS)
def test_a_write_that_fails_half_way_keeps_the_earlier_file_and_leaves_no_temporary(writer, tmp_path):
    path = tmp_path / f"result.{writer}"
    _child(writer, path, "earlier")
    before = path.read_bytes()
    assert 0 < len(before) < LIMIT

    failure = _child(writer, path, "large")

    assert failure["type"] is not None, f"{writer}: the write past RLIMIT_FSIZE did not fail"
    assert path.read_bytes() == before, f"{writer}: the earlier file was changed by a failed write"
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name], f"{writer}: a temporary file was left behind"


@pytest.mark.parametrize("writer", WRITERS)
def test_a_failed_write_raises_oserror_naming_the_destination(writer, tmp_path):
    """io.py's contract: OSError with the destination as its filename, not the temporary file's."""
    path = tmp_path / f"result.{writer}"
    _child(writer, path, "earlier")
    failure = _child(writer, path, "large")
    assert failure["type"] is not None and failure["oserror"], f"{writer}: raised {failure['type']}, not OSError"
    assert failure["filename"] == str(path)


@pytest.mark.parametrize("writer", WRITERS)
def test_a_write_under_the_limit_replaces_the_file(writer, tmp_path):
    """The same child with room to spare: the new content lands (the failure above is the limit's doing)."""
    path = tmp_path / f"result.{writer}"
    _child(writer, path, "earlier")
    before = path.read_bytes()
    assert _child(writer, path, "large", limit=2**40) == {"type": None}
    assert path.read_bytes() != before and path.stat().st_size > LIMIT
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    mask = os.umask(0o022)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # the permissions of a plain open(path, "w")
