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
bench: bench-socketio bench-failover bench-deploy bench-cache bench-restart bench-hostile bench-shards bench-cluster

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

# What a large cache costs the supervisor (it never decodes one): heartbeat answers under 64 MB of small objects,
# peak RSS of a 100 MB hand-over, start-up with 64 MB persisted.
bench-cache *ARGS:
    {{python}} scripts/bench/cache/run.py {{ARGS}}

# SIGTERM and start again (systemctl restart), ten times: seconds from each start to a processor.
bench-restart *ARGS:
    {{python}} scripts/bench/restart/run.py {{ARGS}}

# A sharded bot of 16 groups (32 real worker processes): start-up until every group processes, crash failover per
# group (p50/p99), a rolling deploy's total time and longest per-group gap. `--groups N`, `--kills N`.
bench-shards *ARGS:
    {{python}} scripts/bench/shards/run.py {{ARGS}}

# Several hosts (issue 17): three real agents on a real 3-member etcd, the default TTL (10 s). Host loss, a holder's
# crash and a planned stop (SIGTERM), each `--kills` times (10): signal -> another host processes, p50/p99 and
# against the single-host crash failover of the same run; processing spans checked for overlap (exit 1). `--ttl N`.
bench-cluster *ARGS:
    {{python}} scripts/bench/cluster/run.py {{ARGS}}

# 500 hostile, unauthenticated connections of six kinds against a real supervisor: its RSS growth and a worker's
# heartbeat answers meanwhile (docs/security.md). `--code DIR` measures another checkout the same way.
bench-hostile *ARGS:
    {{python}} scripts/bench/hostile/run.py {{ARGS}}

# Chaos soak (real supervisor and workers under random faults, promises checked; default 10 min), then `fuzz`.
# `just chaos 120 --discord-py`: the workers are real discord.py bots on the fake Discord.
# `fuzz` is a dependency run after the soak, not a nested `just`: that would drop overrides (`just python=… chaos`).
chaos SECONDS="600" *ARGS: && fuzz
    {{python}} scripts/chaos/run.py --seconds {{SECONDS}} {{ARGS}}

# The chaos soak on a sharded bot: 8 shards in 4 groups of 3 workers (12 real worker processes), every check per
# group, `groups` in the JSON last line (docs/reliability.md). No fuzz step.
chaos-shards SECONDS="120" *ARGS:
    {{python}} scripts/chaos/run.py --seconds {{SECONDS}} --shards 8 --shards-per-worker 2 {{ARGS}}

# The cross-host soak (issue 17): real etcd (3 members), three agents on loopback behind a proxy, one bot; host
# losses, frozen agents, agents cut from etcd or from their peers, etcd's leader killed, workers killed. Checks per
# group; the JSON last line has `host_loss_failover_p50_s`/`_p99_s` (docs/reliability.md). `--shards 4`, `--ttl`,
# `--faults host_loss,kill_worker`. No fuzz step.
chaos-cluster SECONDS="300" *ARGS:
    {{python}} scripts/chaos/cluster.py --seconds {{SECONDS}} {{ARGS}}

# Fuzz the codecs and the HTTP/WebSocket edge with URBAN_ROBOT_FUZZ_SCALE (20) times CI's example counts.
fuzz:
    HYPOTHESIS_PROFILE=chaos {{python}} -m pytest -q -p no:cacheprovider tests/web/test_fuzz_edge.py tests/engineio/test_packets.py tests/socketio/test_packets.py

# Mutation testing: plant bugs one at a time in MODULE(s) and run --tests SELECTION on each (scripts/mutation).
mutate *ARGS:
    {{python}} scripts/mutation/run.py {{ARGS}}
