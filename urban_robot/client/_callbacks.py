"""Calling user code: sync or async, errors caught and logged, never killing the client."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("urban_robot.client")


async def call_user(fn: Callable[..., Any] | None, *args: Any, what: str, default: Any = None) -> Any:
    """``fn(*args)``, awaited if it returns an awaitable; ``default`` if it is None or raises."""
    if fn is None:
        return default
    try:
        result = fn(*args)
        if inspect.isawaitable(result):
            result = await result
    except Exception:
        log.exception("%s failed", what)
        return default
    return result
