"""``urban_robot.cluster`` exports the public names of the etcd client and the deploy state, every one of them."""

from __future__ import annotations

import inspect
from types import ModuleType

import pytest

import urban_robot.cluster as face
from urban_robot.cluster import _deploy_state, _etcd


@pytest.mark.parametrize("module", [_etcd, _deploy_state], ids=["client", "deploy state"])
def test_every_public_class_and_function_is_exported(module: ModuleType) -> None:
    public = {
        name
        for name, value in vars(module).items()
        if (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__ == module.__name__
        and not name.startswith("_")
    }
    assert public and sorted(name for name in public if getattr(face, name, None) is not getattr(module, name)) == []
