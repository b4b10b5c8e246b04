"""Urban Robot: a supervisor that keeps a Discord bot alive, current and correct."""

from ._errors import ProtocolError as ProtocolError, UrbanRobotError as UrbanRobotError

__version__ = "0.1.0"
