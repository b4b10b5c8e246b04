"""Class-based namespaces, as python-socketio's ``AsyncNamespace``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._server import Server


class Namespace:
    """Handlers as methods: ``async def on_<event>(self, sid, *args)``.

    Register with ``server.register_namespace(MyNamespace("/path"))``. The
    helpers (``emit``, ``call``, ``enter_room``, ...) default to this namespace.
    """

    def __init__(self, namespace: str = "/") -> None:
        self.namespace = namespace
        self.server: Server = None  # type: ignore[assignment]  # set by register_namespace

    def _set_server(self, server: Server) -> None:
        self.server = server

    def handler_for(self, event: str) -> Any:
        return getattr(self, "on_" + event, None)

    async def emit(
        self,
        event: str,
        data: Any = None,
        to: str | None = None,
        room: str | None = None,
        skip_sid: Any = None,
        namespace: str | None = None,
        callback: Any = None,
    ) -> None:
        await self.server.emit(
            event, data, to=to, room=room, skip_sid=skip_sid, namespace=namespace or self.namespace, callback=callback
        )

    async def send(
        self,
        data: Any,
        to: str | None = None,
        room: str | None = None,
        skip_sid: Any = None,
        namespace: str | None = None,
        callback: Any = None,
    ) -> None:
        await self.emit("message", data, to=to, room=room, skip_sid=skip_sid, namespace=namespace, callback=callback)

    async def call(
        self,
        event: str,
        data: Any = None,
        to: str | None = None,
        sid: str | None = None,
        namespace: str | None = None,
        timeout: float = 60,
    ) -> Any:
        return await self.server.call(
            event, data, to=to, sid=sid, namespace=namespace or self.namespace, timeout=timeout
        )

    async def enter_room(self, sid: str, room: str, namespace: str | None = None) -> None:
        await self.server.enter_room(sid, room, namespace=namespace or self.namespace)

    async def leave_room(self, sid: str, room: str, namespace: str | None = None) -> None:
        await self.server.leave_room(sid, room, namespace=namespace or self.namespace)

    def rooms(self, sid: str, namespace: str | None = None) -> list[str]:
        return self.server.rooms(sid, namespace=namespace or self.namespace)

    async def disconnect(self, sid: str, namespace: str | None = None) -> None:
        await self.server.disconnect(sid, namespace=namespace or self.namespace)

    async def get_session(self, sid: str, namespace: str | None = None) -> dict[str, Any]:
        return await self.server.get_session(sid, namespace=namespace or self.namespace)

    async def save_session(self, sid: str, session: dict[str, Any], namespace: str | None = None) -> None:
        await self.server.save_session(sid, session, namespace=namespace or self.namespace)


AsyncNamespace = Namespace
