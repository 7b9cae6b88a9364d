"""Which CPU path ``CARAFE_CUPY_CPU_KERNEL`` asks for (no torch and no numba needed,
so ``info`` can check the value anywhere)."""

from __future__ import annotations

from .._core import env as _env

ENVIRONMENT_VARIABLE = "CARAFE_CUPY_CPU_KERNEL"
CHOICES = ("auto", "numba", "torch")


def requested() -> str:
    """The path asked for (surrounding spaces ignored, as for every variable; unset or
    empty is auto); ValueError for anything but the three names."""
    value = _env.text(ENVIRONMENT_VARIABLE) or "auto"
    if value not in CHOICES:
        raise ValueError(
            f"{ENVIRONMENT_VARIABLE} must be one of {', '.join(CHOICES)} "
            f"(or unset, meaning auto), got {value!r}"
        )
    return value
