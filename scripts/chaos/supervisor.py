"""The soak's supervisor: ``python -m urban_robot`` itself, with three knobs the config file has no key for.

Run exactly as the CLI runs (same ``main``: config file, signals, logging, admin token), except:

- ``crash_loop_losses`` is effectively off: the soak SIGKILLs workers on purpose, and five kills in
  five minutes would (rightly) make a real supervisor stop respawning them;
- the children's restart back-off starts at 0.2 s and is capped at 2 s (not 1 s doubling to 60 s),
  and a child asked to stop gets 2 s before SIGTERM and 2 s more before SIGKILL, for the same reason;
- a deploy's candidate that never gets a verdict (a bot that hangs before ``ready``) is given up
  after 10 s instead of 180 s, so that one hung commit does not hold every later deploy of a
  one-minute soak.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import attrs

import urban_robot.__main__ as cli
from urban_robot.supervisor import _app
from urban_robot.supervisor._children import ChildPolicy

POLICY = ChildPolicy(term_timeout=2, kill_timeout=2, backoff_base=0.2, backoff_cap=2.0)
VERDICT_TIMEOUT = 10.0
_load_config = cli.load_config  # type: ignore[attr-defined]


def load_config(*args: Any) -> Any:
    config = _load_config(*args)
    if config.options is None:
        return config
    settings = attrs.evolve(config.options.settings, crash_loop_losses=1_000_000)
    return attrs.evolve(config, options=attrs.evolve(config.options, settings=settings, policy=POLICY))


if __name__ == "__main__":
    cli.load_config = load_config  # type: ignore[attr-defined]
    _app.Deployer = functools.partial(_app.Deployer, verdict_timeout=VERDICT_TIMEOUT)  # type: ignore[attr-defined]
    sys.exit(cli.main())
