"""The sans-IO parts import no I/O library (trio, asyncio, sockets, HTTP clients) and read no clock,
directly or through ours.

Checked on the source, by parsing it: the codecs (``urban_robot/engineio/`` but its server,
``urban_robot/socketio/_packets.py``), the worker protocol (``urban_robot/protocol/``), the supervisor's core
(``_core.py``, its events, roles and snapshots, and the bus the shell publishes them on), the webhook gate
(``supervisor/_webhook.py``) and the cluster agents' lease logic (``cluster/_lease.py``), following their
imports of our own modules. A codec module may not even name trio for a type checker. A package face
(``engineio/__init__.py``, ``socketio/__init__.py``) is walked for what importing it runs: its server is
loaded by ``__getattr__`` on first use and named under ``if TYPE_CHECKING:``, neither of which runs on
import (``tests/client/test_imports.py`` checks the same at run time, in a fresh interpreter).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "urban_robot"
SERVERS = {"engineio/_server.py", "socketio/_server.py", "socketio/_namespace.py"}  # the trio shells
FACES = [PACKAGE / "engineio" / "__init__.py", PACKAGE / "socketio" / "__init__.py"]
CODECS = [
    *(p for p in sorted((PACKAGE / "engineio").glob("_*.py")) if str(p.relative_to(PACKAGE)) not in SERVERS),
    PACKAGE / "socketio" / "_packets.py",
]
PROTOCOL = sorted((PACKAGE / "protocol").glob("*.py"))
CORE = [
    PACKAGE / "supervisor" / name
    for name in ("_core.py", "_fleet.py", "_events.py", "_roles.py", "_snapshot.py", "_bus.py", "_webhook.py")
]
CLUSTER = [PACKAGE / "cluster" / "_lease.py"]  # the agents' lease logic (docs/protocol.md §19)
SANS_IO = [*FACES, *CODECS, *PROTOCOL, *CORE, *CLUSTER]
IO_LIBRARIES = {"asyncio", "socket", "selectors", "subprocess", "threading", "httpx", "aiohttp", "socketio", "h11"}
CLOCKS = {"time", "datetime"}  # time is passed in (``now``), never read
DYNAMIC_IMPORTS = ("import_module", "__import__")


def module_name(path: Path, root: Path) -> tuple[str, bool]:
    """The dotted name of the module at ``path``, and whether it is a package's ``__init__``."""
    parts = path.relative_to(root).with_suffix("").parts
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def module_path(name: str, root: Path) -> Path | None:
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def dynamic_import(node: ast.AST) -> str | None:
    """The module of ``importlib.import_module("x")`` or ``__import__("x")``, if ``node`` is one."""
    if not isinstance(node, ast.Call) or not node.args or not isinstance(node.args[0], ast.Constant):
        return None
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    return str(node.args[0].value) if name in DYNAMIC_IMPORTS else None


def runs_on_import(tree: ast.Module, is_package: bool) -> Iterator[ast.AST]:
    """The nodes of ``tree``; for a package face, less what does not run when it is imported (its
    ``if TYPE_CHECKING:`` blocks and its module ``__getattr__``, which loads the server on first use)."""
    if not is_package:
        yield from ast.walk(tree)
        return
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        yield node
        todo.extend(child for child in ast.iter_child_nodes(node) if not _lazy(child))


def _lazy(node: ast.AST) -> bool:
    if isinstance(node, ast.If):
        test = node.test
        return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        )
    return isinstance(node, ast.FunctionDef) and node.name == "__getattr__"


def imported_names(tree: ast.Module, module: str, is_package: bool = False) -> set[str]:
    """Absolute names of the modules ``tree`` imports, anywhere in it (functions, ``if`` blocks...);
    for a package face, only what its import runs (see ``runs_on_import``)."""
    names: set[str] = set()
    for node in runs_on_import(tree, is_package):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = absolute(node, module, is_package)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # ``from . import mod``
        elif (name := dynamic_import(node)) is not None:
            names.add(name)
    return names


def reachable_imports(path: Path, root: Path) -> set[str]:
    """What ``path`` imports, plus what the modules of ``root`` it imports import, and so on."""
    names: set[str] = set()
    todo, seen = [path], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        found = imported_names(ast.parse(current.read_text("utf-8")), *module_name(current, root))
        names |= found
        todo.extend(p for name in found if (p := module_path(name, root)) is not None)
    return names


def is_trio(name: str) -> bool:
    top = name.split(".")[0]
    return top == "trio" or top.startswith("trio_")


def is_io(name: str) -> bool:
    return is_trio(name) or name.split(".")[0] in IO_LIBRARIES | CLOCKS


def test_the_codec_modules_are_all_there() -> None:
    names = {str(path.relative_to(PACKAGE)) for path in CODECS}
    assert {"engineio/_packets.py", "engineio/_handshake.py", "socketio/_packets.py"} <= names
    assert all(path.is_file() for path in [*CODECS, *FACES])


def test_every_module_of_the_codec_packages_is_a_codec_a_face_or_a_declared_server() -> None:
    """A new module in ``engineio/`` or ``socketio/`` is checked as a codec unless it is declared a server."""
    for package in ("engineio", "socketio"):
        for path in (PACKAGE / package).glob("*.py"):
            assert path in CODECS or path in FACES or str(path.relative_to(PACKAGE)) in SERVERS, path


def test_the_servers_are_what_the_faces_keep_out() -> None:
    for name in SERVERS:
        assert any(map(is_trio, reachable_imports(PACKAGE / name, ROOT))), name


def test_the_protocol_and_core_modules_are_all_there() -> None:
    names = {str(path.relative_to(PACKAGE)) for path in PROTOCOL}
    assert {"protocol/__init__.py", "protocol/_messages.py", "protocol/_lease.py", "protocol/_worker.py"} <= names
    assert {"protocol/_cache.py", "protocol/_endpoint.py", "protocol/_errors.py", "protocol/_shards.py"} <= names
    assert all(path.is_file() for path in CORE)


@pytest.mark.parametrize("path", SANS_IO, ids=lambda path: str(path.relative_to(PACKAGE)))
def test_sans_io_module_imports_no_io_library(path: Path) -> None:
    names = reachable_imports(path, ROOT)
    assert names  # the walk did run
    assert sorted(filter(is_io, names)) == []


def test_the_walk_follows_our_imports() -> None:
    assert "urban_robot._errors" in reachable_imports(PACKAGE / "protocol" / "__init__.py", ROOT)
    assert "urban_robot.protocol" in reachable_imports(PACKAGE / "supervisor" / "_core.py", ROOT)
    assert "urban_robot.socketio._packets" in reachable_imports(PACKAGE / "protocol" / "_messages.py", ROOT)


def test_a_clock_read_is_seen() -> None:
    for source in ("import time", "from time import monotonic", "from datetime import datetime"):
        assert any(map(is_io, imported_names(ast.parse(source), "urban_robot.protocol._x")))


def test_python_socketio_is_told_from_ours() -> None:
    assert is_io("socketio") and not is_io("urban_robot.socketio._packets")


@pytest.mark.parametrize(
    "source",
    [
        "import trio",
        "import trio.lowlevel as ll",
        "from trio import open_nursery",
        "from trio_websocket import serve_websocket",
        "import os, trio",
        "def f():\n    import trio\n",
        "if TYPE_CHECKING:\n    from trio import Nursery\n",
        "import importlib\nimportlib.import_module('trio')",
        "__import__('trio')",
    ],
)
def test_the_check_sees_every_form_of_import(source: str) -> None:
    names = imported_names(ast.parse(source), "urban_robot.engineio._x")
    assert any(map(is_trio, names))


@pytest.mark.parametrize(
    "source", ["import triangle", "from . import trio_like_name_in_our_package", "import json\nx = 'import trio'"]
)
def test_the_check_ignores_lookalikes(source: str) -> None:
    names = imported_names(ast.parse(source), "urban_robot.engineio._x")
    assert names
    assert not any(map(is_trio, names))


@pytest.mark.parametrize(
    ("source", "module", "is_package", "expected"),
    [
        ("from .._errors import ProtocolError", "urban_robot.socketio._packets", False, "urban_robot._errors"),
        ("from ._packets import Packet", "urban_robot.engineio", True, "urban_robot.engineio._packets"),
        ("from . import _packets", "urban_robot.engineio._handshake", False, "urban_robot.engineio._packets"),
        ("from ..web import _http", "urban_robot.socketio._packets", False, "urban_robot.web._http"),
    ],
)
def test_relative_imports_are_resolved(source: str, module: str, is_package: bool, expected: str) -> None:
    assert expected in imported_names(ast.parse(source), module, is_package)


FACE = """
from typing import TYPE_CHECKING
from ._packets import Packet as Packet
if TYPE_CHECKING:
    from ._server import Server as Server
def __getattr__(name):
    from . import _server
    return getattr(_server, name)
"""


def test_a_face_is_walked_for_what_its_import_runs(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text(FACE)
    (package / "_packets.py").write_text("import json\n")
    (package / "_server.py").write_text("import trio\n")
    assert "trio" not in reachable_imports(package / "__init__.py", tmp_path)
    (package / "_packets.py").write_text("import trio\n")  # eager: seen
    assert "trio" in reachable_imports(package / "__init__.py", tmp_path)


def test_a_codec_module_may_not_name_trio_even_for_a_type_checker() -> None:
    names = imported_names(ast.parse(FACE), "urban_robot.engineio._x", is_package=False)
    assert "urban_robot.engineio._server" in names


def test_trio_imported_through_one_of_our_modules_is_seen(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "codec.py").write_text("from ._helper import run\n")
    (package / "_helper.py").write_text("from .deeper import run\n")
    (package / "deeper.py").write_text("import trio\nrun = trio.run\n")
    assert "trio" in reachable_imports(package / "codec.py", tmp_path)
