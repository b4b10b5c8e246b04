"""``urban_robot.cluster`` exports the etcd client's public names, and every one of them."""

from __future__ import annotations

import inspect

import urban_robot.cluster as face
from urban_robot.cluster import _etcd


def test_every_public_class_and_function_of_the_client_is_exported() -> None:
    public = {
        name
        for name, value in vars(_etcd).items()
        if (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__ == _etcd.__name__
        and not name.startswith("_")
    }
    assert public and sorted(name for name in public if getattr(face, name, None) is not getattr(_etcd, name)) == []
