"""The health report (docs/protocol.md §9) from the user's checks.

``cogs`` maps a cog name to a check; ``extra`` holds checks that are not cogs (a database, the
gateway...). A check returns a bool, sync or async. An exception, a time-out or anything that is
not ``True`` counts as failing. ``OK`` is true when every check passes, and ``percent`` is the share
of checks that pass (100 with no checks at all).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import trio

from ..protocol import HealthReport
from ._callbacks import call_user

Check = Callable[[], bool | Awaitable[bool]]


async def run_check(name: str, check: Check, timeout: float) -> bool:
    with trio.move_on_after(timeout):
        return await call_user(check, what=f"health check {name!r}", default=False) is True
    return False


async def run_checks(checks: Mapping[str, Check], timeout: float) -> dict[str, bool]:
    """Every check at once, each within ``timeout``."""
    results: dict[str, bool] = {}

    async def one(name: str, check: Check) -> None:
        results[name] = await run_check(name, check, timeout)

    async with trio.open_nursery() as nursery:
        for name, check in checks.items():
            nursery.start_soon(one, name, check)
    return {name: results[name] for name in checks}


async def health_report(cogs: Mapping[str, Check], extra: Mapping[str, Check], timeout: float) -> HealthReport:
    cog_results = await run_checks(cogs, timeout)
    extra_results = await run_checks(extra, timeout)
    passed = [*cog_results.values(), *extra_results.values()]
    percent = 100.0 * sum(passed) / len(passed) if passed else 100.0
    return HealthReport(OK=all(passed), percent=percent, cogs=cog_results)
