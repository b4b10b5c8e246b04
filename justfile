# The one place commands live: CI and people call the same recipes.
python := ".venv/bin/python"

# Run the main job on the embedded default: the supervisor with two simulated workers.
run *ARGS:
    {{python}} -m urban_robot {{ARGS}}

# Install the JavaScript test peer (socket.io-client from npm) and run every test.
test *ARGS: js-deps
    {{python}} -m pytest {{ARGS}}

js-deps:
    npm ci --prefix tests/js --no-audit --no-fund --loglevel=error

# Lint and type-check.
check:
    {{python}} -m ruff check urban_robot tests scripts
    {{python}} -m ruff format --check urban_robot tests scripts
    {{python}} -m mypy

# Every benchmark.
bench: bench-socketio bench-failover bench-deploy

# Socket.IO server against python-socketio on uvicorn and aiohttp, same run.
bench-socketio *ARGS:
    {{python}} -m pip install -q -e '.[bench]'
    {{python}} scripts/bench/socketio/run.py {{ARGS}}

# Crash failover and planned hand-over with real worker processes.
bench-failover *ARGS:
    {{python}} scripts/bench/failover/run.py {{ARGS}}

# Webhook-to-processing time and the hand-over gap of a deploy, with real git and processes.
bench-deploy *ARGS:
    {{python}} scripts/bench/deploy/run.py {{ARGS}}
