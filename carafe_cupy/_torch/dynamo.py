"""Keep the first eager call of a custom op from importing ``torch._dynamo``.

``torch.library.custom_op`` wraps each implementation in
``torch._disable_dynamo``, which imports ``torch._dynamo`` (about 2.4 s) on the
first call just to mark the function as not to be traced. When nothing in the
process has imported ``torch._dynamo``, no compilation can be running, so the
mark has nothing to act on: :func:`defer_dynamo_import` makes the wrapper call
the implementation directly until ``torch._dynamo`` is loaded by someone else,
and from then on apply the real ``torch._dynamo.disable``.

It relies on how torch builds that wrapper (the cached ``__dynamo_disable``
attribute); where torch builds it differently, nothing is changed and the first
call is merely slower.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

_CACHE_ATTRIBUTE = "__dynamo_disable"


def _disable_once_dynamo_is_loaded(function: Callable[..., Any]) -> Callable[..., Any]:
    disabled: Callable[..., Any] | None = None

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        nonlocal disabled
        if disabled is None:
            dynamo = sys.modules.get("torch._dynamo")
            if dynamo is None or not hasattr(dynamo, "disable"):
                return function(*args, **kwargs)
            disabled = dynamo.disable(function, recursive=True, wrapping=False)
        return disabled(*args, **kwargs)

    return call


def defer_dynamo_import(op: Any) -> bool:
    """Install the deferral on every backend of a ``custom_op``; True if it took."""
    backends = getattr(op, "_backend_fns", None)
    if not isinstance(backends, dict):
        return False
    installed = False
    for wrapper in backends.values():
        function = getattr(wrapper, "__wrapped__", None)
        if function is None or hasattr(function, _CACHE_ATTRIBUTE):
            continue
        setattr(function, _CACHE_ATTRIBUTE, _disable_once_dynamo_is_loaded(function))
        installed = True
    return installed
