"""The worker client needs the codecs and the protocol, never the server stack: a bot process loads no
Engine.IO or Socket.IO server, no HTTP listener and no supervisor (``urban_robot.engineio`` and
``urban_robot.socketio`` load their servers only when one of the server's names is used)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SERVER_STACK = (
    "urban_robot.web",
    "urban_robot.socketio._server",
    "urban_robot.engineio._server",
    "urban_robot.supervisor",
)


def loaded_after(statement: str) -> list[str]:
    """The ``urban_robot`` modules a fresh interpreter has loaded after running ``statement``."""
    listing = "print(json.dumps(sorted(m for m in sys.modules if m.startswith('urban_robot'))))"
    code = f"import json, sys\n{statement}\n{listing}"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    return list(json.loads(result.stdout))


def server_stack(modules: list[str]) -> list[str]:
    return [name for name in modules if name == "urban_robot.supervisor" or name.startswith(SERVER_STACK)]


@pytest.mark.slow
@pytest.mark.parametrize(
    "statement",
    [
        "import urban_robot.client",
        "from urban_robot.client import Worker",
        "import urban_robot.protocol, urban_robot.engineio, urban_robot.socketio",
    ],
)
def test_the_client_and_the_codecs_load_no_server(statement: str) -> None:
    modules = loaded_after(statement)
    assert "urban_robot.protocol" in modules  # the statement did run
    assert server_stack(modules) == []


@pytest.mark.slow
def test_the_check_sees_a_server_when_one_is_loaded() -> None:
    modules = loaded_after("import urban_robot.client\nfrom urban_robot.socketio import Server")
    assert {"urban_robot.socketio._server", "urban_robot.engineio._server", "urban_robot.web"} <= set(
        server_stack(modules)
    )


def test_the_faces_lazy_names_are_the_servers() -> None:
    from urban_robot import engineio, socketio
    from urban_robot.engineio import _server as engine_server
    from urban_robot.socketio import _namespace, _server

    assert engineio.EngineServer is engine_server.EngineServer and engineio.Session is engine_server.Session
    assert socketio.Server is socketio.AsyncServer is _server.Server
    assert socketio.Namespace is socketio.AsyncNamespace is _namespace.Namespace
    assert socketio.Reason is engineio.Reason is engine_server.Reason
    assert socketio.Later is _server.Later and socketio.Disconnected is _server.Disconnected
    with pytest.raises(AttributeError):
        socketio.NoSuchName  # noqa: B018
