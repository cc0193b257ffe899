"""Small helpers every table writer and reader shares: which metric values count, plain values, one-line errors.

    finite(float("nan"))  # False: NaN, ±inf, None, strings and bools are not metric values
    plain(np.float32(2))  # 2.0: numpy / pandas scalars as Python values, NaN and NA as None
    error_line(err)       # "ValueError: tau_min must be > 0", from a Ray task error or a traceback as text too
"""

from __future__ import annotations

import math
from typing import Any


def finite(value: Any) -> bool:
    """A real, finite number (bool excluded: True is not a perplexity)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def error_line(err: BaseException, with_type: bool = False) -> str:
    """The one line that says what went wrong.

    A Ray task error carries the worker's exception as `.cause`; that is the one described. When the text is a
    traceback (indented frame lines), its last unindented line is the exception; otherwise the first line is.
    """
    cause = getattr(err, "cause", None) or err
    lines = [line for line in str(cause).strip().splitlines() if line.strip()]
    if any(line.startswith((" ", "\t")) for line in lines):
        lines = [next(line for line in reversed(lines) if not line.startswith((" ", "\t")))]
    text = lines[0] if lines else ""
    name = type(cause).__name__
    if with_type:
        return f"{name}: {text}" if text else name
    return text or name


def plain(value: Any) -> Any:
    """numpy / pandas scalars → Python; NaN / NA → None."""
    if value is None:
        return None
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()
    try:
        if value != value:  # NaN, pd.NA raises TypeError
            return None
    except TypeError:
        return None
    return value
