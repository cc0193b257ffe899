"""Atomic file writes: a crash mid-write never leaves a half-written result behind.

Every writer goes to a temporary file in the destination folder and then `os.replace`s it into place, which is
atomic on POSIX file systems. A failed write (a full disk) removes the temporary file, leaves the previous
version of the destination intact, and raises OSError with the destination as its filename. The file gets the
permissions a plain `open(path, "w")` would give (0666 less the umask): a temporary file is private (0600),
which left report.html unreadable to others next to its PNGs.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def _atomic(path: str | Path, write: Callable[[str], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as err:  # a full disk, say: the error names the file we were writing, not the temporary one
        Path(tmp).unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror or str(err), str(path)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it: put it back at once
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    return _atomic(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, default=str, allow_nan=False) + "\n")


def atomic_write_parquet(path: str | Path, rows: list[dict[str, Any]] | Any) -> Path:
    """Rows (a list of dicts, or a pandas DataFrame) → one Parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    # from_pylist keeps None as a Parquet null (pandas would turn it into a NaN value).
    table = pa.Table.from_pylist(rows) if isinstance(rows, list) else pa.Table.from_pandas(rows, preserve_index=False)
    return _atomic(path, lambda tmp: pq.write_table(table, tmp))


def atomic_torch_save(path: str | Path, obj: Any) -> Path:
    return _atomic(path, lambda tmp: _torch_save(obj, tmp))


def _torch_save(obj: Any, tmp: str) -> None:
    import torch

    # Through a Python file: a failed write (a full disk) is then an OSError, which torch's zip writer reports as a
    # RuntimeError ("enforce fail ... unexpected pos") with the OSError as its context. Re-raise the OSError.
    with open(tmp, "wb") as f:
        try:
            torch.save(obj, f)
        except RuntimeError as err:
            if isinstance(err.__context__, OSError):
                raise err.__context__ from None
            raise
