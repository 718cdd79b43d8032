"""Checks shared by the model builders: one clear line per bad value, always naming the key."""
from __future__ import annotations

from typing import Any, Iterable, Mapping


class ModelConfigError(ValueError):
    """A model or mask setting that cannot work; the message names the key and the value."""


def check_choice(key: str, value: Any, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if value not in choices:
        raise ModelConfigError(f"{key}={value!r} is not one of {', '.join(choices)}")
    return value


def check_positive_int(key: str, value: Any) -> int:
    # bool is an int subclass; `depth=True` is a typo, not a depth of 1.
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ModelConfigError(f"{key}={value!r} must be a positive integer")
    return value


def check_fraction(key: str, value: Any, *, low_open: bool, high_open: bool) -> float:
    """A number in [0, 1] with each end open or closed as asked."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = (value > 0 if low_open else value >= 0) and (value < 1 if high_open else value <= 1)
    if not ok:
        lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
        raise ModelConfigError(f"{key}={value!r} must be in {lo}0, 1{hi}")
    return float(value)


def check_divides(key: str, size: int, divisor_key: str, divisor: int) -> None:
    if size % divisor != 0:
        raise ModelConfigError(f"{divisor_key}={divisor} does not divide {key}={size}")


def reject_unknown(func_name: str, unknown: Mapping[str, Any], known: Iterable[str]) -> None:
    """Builders take **unknown only to turn a stray key into a ModelConfigError instead of a TypeError."""
    if unknown:
        names = ", ".join(sorted(unknown))
        raise ModelConfigError(
            f"{func_name}: unknown argument(s) {names}; known: {', '.join(sorted(known))}"
        )
