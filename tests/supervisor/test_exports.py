"""``urban_robot.supervisor`` exports the core's whole vocabulary, and only it, from ``_events.py``.

The face names each event and action type (no star import): a type added to ``_events.py`` fails here
until it is exported too.
"""

from __future__ import annotations

import inspect
import typing

import urban_robot.supervisor as face
from urban_robot.supervisor import _events


def defined_in_events() -> dict[str, type]:
    return {
        name: value
        for name, value in vars(_events).items()
        if inspect.isclass(value) and value.__module__ == _events.__name__ and not name.startswith("_")
    }


def test_every_event_and_action_type_is_exported() -> None:
    vocabulary = {*typing.get_args(_events.Event), *typing.get_args(_events.Action)}
    assert vocabulary  # the unions were read
    missing = sorted(cls.__name__ for cls in vocabulary if getattr(face, cls.__name__, None) is not cls)
    assert missing == []
    assert face.Event is _events.Event and face.Action is _events.Action


def test_every_public_class_of_the_events_module_is_exported() -> None:
    missing = sorted(name for name, cls in defined_in_events().items() if getattr(face, name, None) is not cls)
    assert missing == []


def test_the_events_modules_helper_imports_do_not_leak() -> None:
    for name in ("attrs", "Any", "CacheChange", "CacheImage", "CacheSyncMessage"):
        assert not hasattr(face, name), name
