"""Urban Robot for bots that are not written in trio.

- :mod:`urban_robot.integrations.discord`: asyncio bots on discord.py — ``commands.Bot``,
  ``AutoShardedBot`` or a plain ``discord.Client`` (``attach(bot, version=...)``). It needs
  python-socketio's asyncio client (``pip install "python-socketio[asyncio-client]" aiohttp``) and
  discord.py.
"""
