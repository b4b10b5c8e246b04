"""Urban Robot for bots that are not written in trio.

- :mod:`urban_robot.integrations.discord`: asyncio bots with discord.py's ``commands.Bot`` API
  (``attach(bot, version=...)``). It needs python-socketio's asyncio client
  (``pip install "python-socketio[asyncio-client]" aiohttp``), not discord.py itself.
"""
