"""Argument checks shared by the library's entry points and the CLI.

Python's ``float`` accepts ``nan`` and ``inf``, and every comparison with NaN is false, so a check
written as ``if seconds <= 0: raise`` lets NaN through (a time budget that never runs out, a
tolerance that accepts everything). Every number a user passes goes through :func:`number` or
:func:`count`, which refuse non-finite values first; every comma-separated list goes through
:func:`names` or :func:`int_list`, which refuse an empty list. Each failure is one
:class:`UsageError` line that names the argument, the accepted range and the value given.
"""
from __future__ import annotations

import math
import numbers
from typing import Iterable, Sequence

from .errors import UsageError


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _range_text(low, high, low_open: bool) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {_fmt(low)}")
    if high is not None:
        parts.append(f"<= {_fmt(high)}")
    return " and ".join(parts)


def number(value, name: str, *, low: float | None = None, high: float | None = None, low_open: bool = False) -> float:
    """``value`` as a float when it is a finite real in [low, high] ((low, high] with ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UsageError(f"{name} must be a number, got {value!r}")
    v = float(value)
    rng = _range_text(low, high, low_open)
    if not math.isfinite(v):
        raise UsageError(f"{name} must be a finite number{' ' + rng if rng else ''}, got {value!r}")
    if low is not None and (v <= low if low_open else v < low) or high is not None and v > high:
        raise UsageError(f"{name} must be {rng}, got {value!r}")
    return v


def count(value, name: str, *, low: int = 1, high: int | None = None) -> int:
    """``value`` as an int when it is an integer (not a bool, not a fraction) in [low, high]."""
    if isinstance(value, bool):
        raise UsageError(f"{name} must be an integer, got {value!r}")
    if not isinstance(value, numbers.Integral):
        if isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer():
            value = int(value)
        else:
            raise UsageError(f"{name} must be an integer, got {value!r}")
    if value < low or high is not None and value > high:
        raise UsageError(f"{name} must be an integer {_range_text(low, high, False)}, got {value!r}")
    return int(value)


def optional_count(value, name: str, *, low: int = 1, high: int | None = None) -> int | None:
    return None if value is None else count(value, name, low=low, high=high)


def names(value: str | Iterable[str], name: str) -> list[str]:
    """A comma-separated string (or a sequence of strings) as a list of its non-empty items, in
    order, each once; an empty result is an error."""
    items = value.split(",") if isinstance(value, str) else list(value)
    if not all(isinstance(v, str) for v in items):
        raise UsageError(f"{name} must be names (strings), got {items!r}")
    out = list(dict.fromkeys(v.strip() for v in items if v.strip()))
    if not out:
        raise UsageError(f"{name} is empty: give at least one, e.g. {name} torch,ort")
    return out


def int_list(value: str | Sequence[int], name: str, *, low: int = 1) -> list[int]:
    """``"1,4"`` (or a sequence) as a non-empty list of integers >= ``low``."""
    if isinstance(value, str):
        parts = [v.strip() for v in value.split(",") if v.strip()]
        try:
            items = [int(v) for v in parts]
        except ValueError:
            raise UsageError(f"{name} {value!r} must be comma-separated integers, e.g. 1,4") from None
    else:
        items = list(value)
    if not items:
        raise UsageError(f"{name} is empty: give at least one integer, e.g. 1,4")
    return [count(v, name, low=low) for v in items]
