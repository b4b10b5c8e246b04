"""The supervisor's configuration: flags > environment > ``urban-robot.toml`` > ``.env`` > defaults.

``load_config(flags, os.environ, config_path, Path.cwd())`` reads every source,
checks every value, and either returns a ``Config`` or raises one ``ConfigError``
whose message has one line per problem (``port: expected an integer 0-65535,
got 'eighty' (from URBAN_ROBOT_PORT)``): an operator fixes them all in one go.

``KEYS`` is the one table of what can be configured; docs/configuration.md
lists the same keys for people. Secrets (the bot token, the webhook secret, the
admin token, the external workers' secrets, the notification webhook's URL) never appear in a repr or an
error message.

A key may be a table of ``NAME = value`` pairs (``Key.table``): ``[secrets.workers]`` in TOML, one
variable per name in the environment (``URBAN_ROBOT_WORKER_SECRET_<NAME>``); its entries merge across
sources, each name taken from the first source that has it.

No ``helium_path`` means demo mode: ``Config.options`` is ``None`` and
``Config.demo`` is true; the CLI then runs its simulated workers on
``Config.host``/``port``/``state_dir``.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shlex
import sys
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from ._errors import UrbanRobotError
from .cluster._lease import Timing
from .protocol import MAX_SHARDS
from .supervisor import (
    DISCORD_API,
    WEBHOOK_ENV,
    ChildPolicy,
    ClusterOptions,
    DiscordWebhook,
    NotifyError,
    Options,
    Settings,
)

log = logging.getLogger("urban_robot.config")

__all__ = ["KEYS", "Config", "ConfigError", "Key", "load_config", "read_dotenv"]

CONFIG_FILE = "urban-robot.toml"
DOTENV_FILE = ".env"
CONFIG_ENV = "URBAN_ROBOT_CONFIG"
TABLES = ("workers", "notify", "secrets", "cluster")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
NAME = "<NAME>"  # in a table key's variable: where each entry's name goes
WORKER_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MIN_WORKER_SECRET = 16  # characters: a worker secret lets its holder receive the bot token


class ConfigError(UrbanRobotError):
    """The configuration has problems; ``str(error)`` is one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = tuple(problems)


class _Invalid(Exception):
    """A parser's complaint: the text after ``key: ``."""


@attrs.frozen
class Key:
    name: str  # "port", or "workers.interval" for a key in the [workers] table
    env: str  # the environment (and .env) variable
    parse: Callable[[Any, Path], Any] = attrs.field(repr=False)  # (raw value, cwd) -> value; raises _Invalid
    default: Any
    meaning: str
    secret: bool = False  # never a flag, never printed
    table: bool = False  # NAME = value pairs: a TOML table, and one variable per NAME (``env`` holds ``<NAME>``)

    @property
    def flag(self) -> str | None:
        return None if self.secret or self.table else "--" + self.name.replace(".", "-").replace("_", "-")


@attrs.frozen
class Config:
    options: Options | None  # None: no helium_path, demo mode
    host: str
    port: int
    state_dir: Path
    log_level: int
    files: tuple[Path, ...] = ()  # the files read, for "configured from ..." in the log

    @property
    def demo(self) -> bool:
        return self.options is None


# ---- parsers: each takes the raw value (a TOML value, or a string from the environment) ----


def _got(value: object) -> str:
    return f"got {value!r}"


def _string(value: Any, cwd: Path) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Invalid(f"expected a non-empty string, {_got(value)}")
    return value.strip()


def _integer(low: int, high: int | None) -> Callable[[Any, Path], int]:
    expected = f"an integer {low}-{high}" if high is not None else f"an integer >= {low}"

    def parse(value: Any, cwd: Path) -> int:
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
            number = int(value)
        if number is None or number < low or (high is not None and number > high):
            raise _Invalid(f"expected {expected}, {_got(value)}")
        return number

    return parse


def _number(low: float, high: float | None, *, low_open: bool, expected: str) -> Callable[[Any, Path], float]:
    def parse(value: Any, cwd: Path) -> float:
        number: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                number = None
        if number is None or not math.isfinite(number) or number < low or (low_open and number == low):
            raise _Invalid(f"expected {expected}, {_got(value)}")
        if high is not None and number > high:
            raise _Invalid(f"expected {expected}, {_got(value)}")
        return number

    return parse


_seconds = _number(0.0, None, low_open=True, expected="a number of seconds > 0")
_non_negative_seconds = _number(0.0, None, low_open=False, expected="a number of seconds >= 0")


def _poll_interval(value: Any, cwd: Path) -> float | None:
    seconds = _number(0.0, None, low_open=False, expected="a number of seconds >= 0 (0 = off)")(value, cwd)
    return seconds or None


def _shard_count(value: Any, cwd: Path) -> int | str:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        return _integer(1, MAX_SHARDS)(value, cwd)
    except _Invalid:
        raise _Invalid(
            f'expected "auto" (Discord\'s recommended count) or an integer 1-{MAX_SHARDS}, {_got(value)}'
        ) from None


def _boolean(value: Any, cwd: Path) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise _Invalid(f"expected true or false, {_got(value)}")


def _level(value: Any, cwd: Path) -> int:
    """A level name (any case) or a number, as in the original bot's ``.env`` (``LOG_LEVEL=20``): a threshold,
    records at that level and above pass (10 DEBUG, 20 INFO, 30 WARNING, 40 ERROR, 50 CRITICAL; any integer >= 0)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    text = value.strip() if isinstance(value, str) else ""
    if text.isascii() and text.isdigit():
        return int(text)
    if text.upper() in LEVELS:
        return int(logging.getLevelName(text.upper()))
    raise _Invalid(f"expected a log level ({', '.join(LEVELS)}) or a number such as 20, {_got(value)}")


def _command_line(value: Any, cwd: Path) -> tuple[str, ...]:
    expected = f"expected a command line (a string or a list of strings), {_got(value)}"
    if isinstance(value, str):
        try:
            words = shlex.split(value)
        except ValueError:
            raise _Invalid(expected) from None
    elif isinstance(value, list | tuple) and all(isinstance(word, str) for word in value):
        words = list(value)
    else:
        raise _Invalid(expected)
    if not words or not all(words):
        raise _Invalid(expected)
    return tuple(words)


def _names(value: Any, cwd: Path) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(name.strip() for name in value.split(",") if name.strip())
    if isinstance(value, list | tuple) and all(isinstance(name, str) and name.strip() for name in value):
        return tuple(name.strip() for name in value)
    raise _Invalid(f"expected a list of module names (or one comma-separated string), {_got(value)}")


def _host_names(value: Any, cwd: Path) -> tuple[str, ...]:
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, list | tuple) or not all(isinstance(name, str) for name in names):
        raise _Invalid(f"expected a list of host names (or one comma-separated string), {_got(value)}")
    cleaned = tuple(name.strip().lower() for name in names if name.strip())
    if any(c.isspace() or c in "/@" for name in cleaned for c in name):
        raise _Invalid(f"expected host names without scheme, path or spaces, {_got(value)}")
    return cleaned


CLUSTER_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _cluster_name(value: Any, cwd: Path) -> str:
    """A cluster's or a host's name: part of etcd keys, so letters, digits and ``_.-`` only."""
    if not isinstance(value, str) or not CLUSTER_NAME.fullmatch(value.strip()):
        raise _Invalid(f"expected 1-64 letters, digits, '_', '.' or '-', {_got(value)}")
    return value.strip()


def _etcd_urls(value: Any, cwd: Path) -> tuple[str, ...]:
    urls = value.split(",") if isinstance(value, str) else value
    if not isinstance(urls, list | tuple) or not all(isinstance(url, str) for url in urls):
        raise _Invalid(f"expected a list of etcd client URLs (or one comma-separated string), {_got(value)}")
    cleaned = tuple(url.strip().rstrip("/") for url in urls if url.strip())
    if not cleaned or not all(url.startswith(("http://", "https://")) and " " not in url for url in cleaned):
        raise _Invalid(f"expected http://host:2379 URLs, one at least, {_got(value)}")
    return cleaned


def _cluster_ttl(value: Any, cwd: Path) -> int:
    ttl = _integer(6, 300)(value, cwd)
    return ttl


def _snowflake(value: Any, cwd: Path) -> str:
    text = str(value).strip() if isinstance(value, int | str) and not isinstance(value, bool) else ""
    if not (text.isascii() and text.isdigit()):
        raise _Invalid(f"expected a Discord id (a number), {_got(value)}")
    return text


def _path(value: Any, cwd: Path) -> Path:
    if not isinstance(value, str | Path) or not str(value).strip():
        raise _Invalid(f"expected a path, {_got(value)}")
    path = Path(str(value).strip()).expanduser()
    return path if path.is_absolute() else cwd / path


def _directory(value: Any, cwd: Path) -> Path:
    path = _path(value, cwd)
    if not path.exists():
        raise _Invalid(f"{path} does not exist")
    if not path.is_dir():
        raise _Invalid(f"{path} is not a directory")
    return path


def _http_url(value: Any, cwd: Path) -> str:
    text = value.strip() if isinstance(value, str) else ""
    if not text.startswith(("http://", "https://")) or any(c.isspace() for c in text):
        raise _Invalid(f"expected an http:// or https:// URL, {_got(value)}")
    return text.rstrip("/")


def _secret(value: Any, cwd: Path) -> str:
    """A token or secret: printable ASCII without spaces, as any header value must be. Never echoed."""
    if not isinstance(value, str) or not value:
        raise _Invalid("expected a non-empty string (value hidden)")
    if not (value.isascii() and value.isprintable()) or any(c.isspace() for c in value):
        raise _Invalid("expected printable ASCII without spaces (value hidden)")
    return value


def _webhook_url(value: Any, cwd: Path) -> DiscordWebhook:
    """A Discord webhook's URL: it holds the webhook's token, so it is a secret and never echoed."""
    if not isinstance(value, str):
        raise _Invalid("expected a webhook URL, a string (value hidden)")
    try:
        return DiscordWebhook.parse(value)
    except NotifyError as exc:
        raise _Invalid(str(exc)) from None


def _worker_secrets(value: Any, cwd: Path) -> dict[str, str]:
    """``{NAME: secret}``: each connects as ``worker:NAME`` (docs/protocol.md §3). Names are said, secrets never."""
    if not isinstance(value, dict):
        raise _Invalid(f"expected a table of NAME = secret, {_got(type(value).__name__)}")
    secrets: dict[str, str] = {}
    for name, secret in value.items():
        if not WORKER_NAME.fullmatch(str(name)):
            raise _Invalid(f"{str(name)[:80]!r}: a worker name is 1-64 letters, digits, '_', '.' or '-'")
        try:
            secrets[name] = _secret(secret, cwd)
        except _Invalid as exc:
            raise _Invalid(f"{name}: {exc}") from None
        if len(secrets[name]) < MIN_WORKER_SECRET:
            raise _Invalid(f"{name}: expected at least {MIN_WORKER_SECRET} characters (value hidden)")
    return secrets


MIN_SECRET = 16  # characters: a 1-character admin token or webhook secret is guessed at once


def _long_secret(value: Any, cwd: Path) -> str:
    """A secret we check ourselves (admin token, webhook secret): at least ``MIN_SECRET`` characters."""
    secret = _secret(value, cwd)
    if len(secret) < MIN_SECRET:
        raise _Invalid(f"too short: use at least {MIN_SECRET} characters, e.g. `openssl rand -hex 32` (value hidden)")
    return secret


_DEFAULTS = Settings()
_POLICY = ChildPolicy()
_DEPLOY_TIMEOUT, _INSTALL_TIMEOUT = (
    attrs.fields(Options).deploy_timeout.default,
    attrs.fields(Options).install_timeout.default,
)

KEYS: tuple[Key, ...] = (
    Key("helium_path", "HELIUM_PATH", _directory, None, "the bot's git checkout; unset = demo mode"),
    Key(
        "command",
        "URBAN_ROBOT_COMMAND",
        _command_line,
        (sys.executable, "main.py"),
        "how to start one worker, run in helium_path",
    ),
    Key("host", "URBAN_ROBOT_HOST", _string, "127.0.0.1", "address the supervisor listens on"),
    Key("port", "URBAN_ROBOT_PORT", _integer(0, 65535), 8080, "port the supervisor listens on (0: any free port)"),
    Key(
        "allowed_hosts",
        "URBAN_ROBOT_ALLOWED_HOSTS",
        _host_names,
        (),
        "public names the supervisor is reached by (a reverse proxy's); any other Host gets 421 (DNS rebinding)",
    ),
    Key("state_dir", "URBAN_ROBOT_STATE_DIR", _path, None, "where state, releases and logs are kept"),
    Key(
        "max_connections",
        "URBAN_ROBOT_MAX_CONNECTIONS",
        _integer(8, None),
        _DEFAULTS.max_connections,
        "HTTP connections open at once on the port; more are closed on arrival",
    ),
    Key(
        "cache_max",
        "URBAN_ROBOT_CACHE_MAX",
        _integer(1, None),
        _DEFAULTS.cache_max,
        "bytes of the largest cache kept (as the worker encoded it); a larger sync is refused",
    ),
    Key("standbys", "URBAN_ROBOT_STANDBYS", _integer(0, None), 1, "warm standby workers besides the running one"),
    Key(
        "shard_count",
        "URBAN_ROBOT_SHARD_COUNT",
        _shard_count,
        None,
        "a sharded bot's shard count, or \"auto\" (Discord's recommended one); unset: the bot decides, one group",
    ),
    Key(
        "shards_per_worker",
        "URBAN_ROBOT_SHARDS_PER_WORKER",
        _integer(1, MAX_SHARDS),
        None,
        "shards one worker process runs (a shard group, with its own running worker and standbys); unset: all",
    ),
    Key("branch", "URBAN_ROBOT_BRANCH", _string, "main", "the git branch that is deployed"),
    Key(
        "poll_interval",
        "URBAN_ROBOT_POLL_INTERVAL",
        _poll_interval,
        None,
        "fetch the branch every this many seconds; 0 or unset = only on webhook/admin request",
    ),
    Key(
        "install",
        "URBAN_ROBOT_INSTALL",
        _command_line,
        None,
        "command run in each new release before its candidate starts",
    ),
    Key(
        "require_deploy_tag",
        "URBAN_ROBOT_REQUIRE_DEPLOY_TAG",
        _boolean,
        False,
        "deploy on webhook only commits whose message contains [DEPLOY]",
    ),
    Key("log_level", "LOG_LEVEL", _level, logging.INFO, "the supervisor's log level"),
    Key(
        "workers.interval",
        "URBAN_ROBOT_WORKERS_INTERVAL",
        _seconds,
        _DEFAULTS.interval,
        "seconds between worker heartbeats",
    ),
    Key(
        "workers.grace",
        "URBAN_ROBOT_WORKERS_GRACE",
        _non_negative_seconds,
        _DEFAULTS.grace,
        "silence past interval + grace = the worker is dead",
    ),
    Key(
        "workers.lease_margin",
        "URBAN_ROBOT_WORKERS_LEASE_MARGIN",
        _non_negative_seconds,
        _DEFAULTS.lease_margin,
        "how much longer our view of a lease lasts than the worker's",
    ),
    Key(
        "workers.health_timeout",
        "URBAN_ROBOT_WORKERS_HEALTH_TIMEOUT",
        _seconds,
        _DEFAULTS.health_timeout,
        "seconds a new worker has to pass its health check",
    ),
    Key(
        "workers.frozen_limit",
        "URBAN_ROBOT_WORKERS_FROZEN_LIMIT",
        _seconds,
        None,
        "seconds a child may be silent while the kernel reports its process stopped before it is killed"
        " (unset: interval + 1.5)",
    ),
    Key(
        "workers.hang_limit",
        "URBAN_ROBOT_WORKERS_HANG_LIMIT",
        _seconds,
        None,
        "seconds a child may be silent, stopped or not, before it is killed (unset: interval + 7)",
    ),
    Key(
        "workers.gateway_down_limit",
        "URBAN_ROBOT_WORKERS_GATEWAY_DOWN_LIMIT",
        _non_negative_seconds,
        _DEFAULTS.gateway_down_limit,
        "seconds a running worker's Discord Gateway may be down before a standby whose Gateway is up takes over",
    ),
    Key(
        "workers.vital_cogs",
        "URBAN_ROBOT_WORKERS_VITAL_COGS",
        _names,
        _DEFAULTS.vital_cogs,
        "cogs that must load for a worker to be healthy (comma-separated in the environment)",
    ),
    Key(
        "workers.healthy_percentage",
        "URBAN_ROBOT_WORKERS_HEALTHY_PERCENTAGE",
        _number(0.0, 100.0, low_open=False, expected="a number 0-100"),
        _DEFAULTS.healthy_percentage,
        "percentage of cogs that must load for a worker to be healthy",
    ),
    Key(
        "workers.shutdown_if_outdated",
        "URBAN_ROBOT_WORKERS_SHUTDOWN_IF_OUTDATED",
        _boolean,
        _DEFAULTS.shutdown_if_outdated,
        "shut outdated workers down instead of keeping them in a coma",
    ),
    Key(
        "workers.crash_loop_losses",
        "URBAN_ROBOT_WORKERS_CRASH_LOOP_LOSSES",
        _integer(0, None),
        _DEFAULTS.crash_loop_losses,
        "this many unexpected worker exits within crash_loop_window = a crash loop: is_sane false (0: never)",
    ),
    Key(
        "workers.crash_loop_window",
        "URBAN_ROBOT_WORKERS_CRASH_LOOP_WINDOW",
        _seconds,
        _DEFAULTS.crash_loop_window,
        "seconds within which crash_loop_losses exits make a crash loop",
    ),
    Key(
        "workers.restart_backoff",
        "URBAN_ROBOT_WORKERS_RESTART_BACKOFF",
        _non_negative_seconds,
        _POLICY.backoff_base,
        "seconds before restarting a worker that died young; doubles per quick death up to restart_backoff_max",
    ),
    Key(
        "workers.restart_backoff_max",
        "URBAN_ROBOT_WORKERS_RESTART_BACKOFF_MAX",
        _non_negative_seconds,
        _POLICY.backoff_cap,
        "the longest restart back-off (seconds)",
    ),
    Key(
        "workers.stop_timeout",
        "URBAN_ROBOT_WORKERS_STOP_TIMEOUT",
        _seconds,
        _POLICY.term_timeout,
        "seconds a worker asked to shut down has before SIGTERM, and again before SIGKILL",
    ),
    Key(
        "workers.user",
        "URBAN_ROBOT_WORKERS_USER",
        _string,
        None,
        "run worker children as this user (name or uid; the supervisor must run as root): then they cannot read"
        " the state directory's secrets; unset = as the supervisor's own user",
    ),
    Key(
        "workers.group",
        "URBAN_ROBOT_WORKERS_GROUP",
        _string,
        None,
        "with workers.user: run worker children with this group (name or gid; default the user's own)",
    ),
    Key(
        "deploy_timeout",
        "URBAN_ROBOT_DEPLOY_TIMEOUT",
        _seconds,
        _DEPLOY_TIMEOUT,
        "seconds a deploy's new worker has to start, pass its health check and take over; else it is rolled back",
    ),
    Key(
        "install_timeout",
        "URBAN_ROBOT_INSTALL_TIMEOUT",
        _seconds,
        _INSTALL_TIMEOUT,
        "seconds the install step may take in a new release",
    ),
    Key("notify.channel", "LOGGING_CHANNEL", _snowflake, None, "Discord channel id for notifications"),
    Key(
        "notify.dm",
        "URBAN_ROBOT_NOTIFY_DM",
        _snowflake,
        None,
        "Discord user id to send notifications to by DM instead of a channel",
    ),
    Key("notify.level", "DISCORD_LOG_LEVEL", _level, logging.WARNING, "log records at this level go to Discord too"),
    Key(
        "notify.api_url",
        "URBAN_ROBOT_DISCORD_API_URL",
        _http_url,
        DISCORD_API,
        "base URL of Discord's REST API for notifications (a test double or a proxy; default Discord's v10)",
    ),
    Key(
        "cluster.name",
        "URBAN_ROBOT_CLUSTER_NAME",
        _cluster_name,
        None,
        "several hosts on etcd (docs/deployment.md): the cluster's name, the same on every host; unset = one host",
    ),
    Key("cluster.host", "URBAN_ROBOT_CLUSTER_HOST", _cluster_name, None, "this host's name, unique in the cluster"),
    Key("cluster.etcd", "URBAN_ROBOT_CLUSTER_ETCD", _etcd_urls, (), "etcd's client URLs (http://host:2379, ...)"),
    Key(
        "cluster.advertise",
        "URBAN_ROBOT_CLUSTER_ADVERTISE",
        _http_url,
        None,
        "how the other hosts' agents reach this one (default http://<host>:<port>)",
    ),
    Key(
        "cluster.ttl",
        "URBAN_ROBOT_CLUSTER_TTL",
        _cluster_ttl,
        10,
        "the agent's etcd lease, seconds: a lost host's groups move after about this long",
    ),
    Key(
        "secrets.cluster",
        "URBAN_ROBOT_CLUSTER_SECRET",
        _long_secret,
        None,
        "shared by every host of the cluster: authenticates the agents to each other (cache replication)",
        secret=True,
    ),
    Key(
        "secrets.bot_token",
        "BOT_TOKEN",
        _secret,
        None,
        "Discord bot token, for the workers and for notifications; required with helium_path",
        secret=True,
    ),
    Key(
        "secrets.notify_webhook",
        WEBHOOK_ENV,
        _webhook_url,
        None,
        "a Discord channel webhook's URL for notifications: alone, or the fallback when Discord refuses the bot's"
        " token or channel (the URL holds the webhook's token)",
        secret=True,
    ),
    Key(
        "secrets.webhook_secret",
        "URBAN_ROBOT_WEBHOOK_SECRET",
        _long_secret,
        None,
        "GitHub webhook secret; unset = the webhook is refused (403)",
        secret=True,
    ),
    Key(
        "secrets.admin_token",
        "URBAN_ROBOT_ADMIN_TOKEN",
        _long_secret,
        None,
        "bearer token for the admin API; unset = generated into <state_dir>/admin.token at first start",
        secret=True,
    ),
    Key(
        "secrets.workers",
        "URBAN_ROBOT_WORKER_SECRET_" + NAME,
        _worker_secrets,
        {},
        "secrets of external workers (not spawned by the supervisor): NAME = secret connects as worker:NAME",
        secret=True,
        table=True,
    ),
)
_BY_NAME = {key.name: key for key in KEYS}
_BY_ENV = {key.env: key for key in KEYS}


# ---- sources ----


def read_dotenv(path: Path, problems: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` lines (``export`` allowed), ``#`` comments, optional single or double quotes."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}")
        return {}
    variables: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        parsed = _dotenv_line(line.strip())
        if isinstance(parsed, str):
            problems.append(f"{path}:{number}: {parsed}")  # never the line itself: it may hold a secret
        elif parsed is not None:
            variables[parsed[0]] = parsed[1]
    return variables


def _dotenv_line(line: str) -> tuple[str, str] | str | None:
    if not line or line.startswith("#"):
        return None
    name, equals, value = line.removeprefix("export ").partition("=")
    name, value = name.strip(), value.strip()
    if not equals or not name.replace("_", "a").isalnum() or name[0].isdigit():
        return "expected KEY=VALUE"
    if value[:1] in ("'", '"'):
        end = value.find(value[0], 1)
        if end == -1:
            return f"unclosed {value[0]} quote"
        rest = value[end + 1 :].strip()
        if rest and not rest.startswith("#"):
            return "unexpected text after the closing quote"
        return name, value[1:end]
    return name, value.split(" #", 1)[0].strip()


def _read_toml(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            document = tomllib.load(file)
    except OSError as exc:
        problems.append(f"{path}: cannot read: {exc.strerror}")
        return {}
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        problems.append(f"{path}: invalid TOML: {exc}")  # tomllib's message ends "(at line L, column C)"
        return {}
    return _flatten(document, path, problems)


def _flatten(document: dict[str, Any], path: Path, problems: list[str]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, value in document.items():
        if name in TABLES:
            if not isinstance(value, dict):
                got = "got a value (hidden)" if name == "secrets" else _got(value)  # `secrets = "<token>"` is a secret
                problems.append(f"{name}: expected a table [{name}], {got} (from {path})")
                continue
            flat.update({f"{name}.{inner}": inner_value for inner, inner_value in value.items()})
        else:
            flat[name] = value
    for name in [name for name in flat if name not in _BY_NAME]:
        problems.append(f"{name}: unknown key (in {path}); see docs/configuration.md")
        del flat[name]
    return flat


def _config_file(
    config_path: Path | None, environ: Mapping[str, str], dotenv: Mapping[str, str], cwd: Path, problems: list[str]
) -> Path | None:
    named = str(config_path) if config_path is not None else environ.get(CONFIG_ENV) or dotenv.get(CONFIG_ENV)
    if named:
        path = _path(named, cwd)
        if not path.is_file():
            problems.append(f"config: {path} does not exist")
            return None
        return path
    default = cwd / CONFIG_FILE
    return default if _trusted(default) else None


def _trusted(path: Path) -> bool:
    """Whether a file found (not named) in the working directory may configure us: ours and not writable by others.

    Someone else's ``urban-robot.toml`` or ``.env`` in a shared directory could send the CLI, with the real
    admin token, to a port of theirs, or give the supervisor their webhook secret.
    """
    try:
        info = path.stat()
    except OSError:
        return False
    if not path.is_file():
        return False
    if info.st_uid != os.getuid():
        log.warning("ignoring %s: it belongs to uid %d, not to this user (%d)", path, info.st_uid, os.getuid())
        return False
    if info.st_mode & 0o022:
        log.warning("ignoring %s: others can write it (chmod go-w %s to use it)", path, path)
        return False
    return True


# ---- putting it together ----


def load_config(
    argv_overrides: Mapping[str, Any], environ: Mapping[str, str], config_path: Path | None, cwd: Path
) -> Config:
    """Build the configuration from every source, or raise ``ConfigError`` listing every problem.

    ``argv_overrides`` maps config keys (``"port"``, ``"workers.interval"``) to the
    values of flags the operator gave; ``None`` values count as not given.
    """
    problems: list[str] = []
    files: list[Path] = []
    dotenv: dict[str, str] = {}
    if _trusted(cwd / DOTENV_FILE):
        dotenv = read_dotenv(cwd / DOTENV_FILE, problems)
        files.append(cwd / DOTENV_FILE)
    toml: dict[str, Any] = {}
    config_file = _config_file(config_path, environ, dotenv, cwd, problems)
    if config_file is not None:
        toml = _read_toml(config_file, problems)
        files.append(config_file)
    layers = _layers(argv_overrides, environ, toml, config_file, dotenv, cwd, problems)
    values = {key.name: _value(key, layers, cwd, problems) for key in KEYS}
    _check_together(values, problems)
    if problems:
        raise ConfigError(problems)
    return _build(values, cwd, tuple(files))


Layer = tuple[Mapping[str, Any], Callable[[Key], str]]  # values by key name, and how to name their source


def _layers(
    flags: Mapping[str, Any],
    environ: Mapping[str, str],
    toml: Mapping[str, Any],
    config_file: Path | None,
    dotenv: Mapping[str, str],
    cwd: Path,
    problems: list[str],
) -> list[Layer]:
    for name in flags:
        if name not in _BY_NAME:
            problems.append(f"{name}: unknown key (from the command line)")
    given = {name: value for name, value in flags.items() if name in _BY_NAME and value is not None}

    def from_environment(variables: Mapping[str, str]) -> dict[str, Any]:
        # An empty variable counts as unset, as in the original bot's .env ("LOGGING_CHANNEL=").
        found: dict[str, Any] = {key.name: variables[key.env] for key in KEYS if variables.get(key.env, "")}
        for key in KEYS:
            prefix = key.env.removesuffix(NAME)
            entries = {
                name[len(prefix) :]: value
                for name, value in variables.items()
                if key.table and name.startswith(prefix) and len(name) > len(prefix) and value
            }
            if entries:
                found[key.name] = entries
        return found

    return [
        (given, lambda key: f"{key.flag}" if key.flag else "the command line"),
        (from_environment(environ), lambda key: key.env),
        (toml, lambda key: str(config_file)),
        (from_environment(dotenv), lambda key: f"{key.env} in {cwd / DOTENV_FILE}"),
    ]


def _value(key: Key, layers: list[Layer], cwd: Path, problems: list[str]) -> Any:
    if key.table:
        return _table(key, layers, cwd, problems)
    for values, source in layers:
        if key.name in values:
            try:
                return key.parse(values[key.name], cwd)
            except _Invalid as exc:
                problems.append(f"{key.name}: {exc} (from {source(key)})")
                return key.default
    return key.default


def _table(key: Key, layers: list[Layer], cwd: Path, problems: list[str]) -> Any:
    merged: dict[str, Any] = {}
    for values, source in reversed(layers):  # the weakest first: a stronger source's entry replaces it
        if key.name in values:
            try:
                merged.update(key.parse(values[key.name], cwd))
            except _Invalid as exc:
                problems.append(f"{key.name}: {exc} (from {source(key)})")
    return merged or key.default


def _check_together(values: Mapping[str, Any], problems: list[str]) -> None:
    if values["helium_path"] is not None and values["secrets.bot_token"] is None:
        problems.append("secrets.bot_token: required to supervise helium_path; set BOT_TOKEN (environment or .env)")
    shard_count_refused = any(p.startswith("shard_count:") for p in problems)  # said once: it is set, but wrong
    if values["shards_per_worker"] is not None and values["shard_count"] is None and not shard_count_refused:
        problems.append('shards_per_worker: set shard_count too (a number, or "auto")')
    cluster = [name for name in ("cluster.host", "cluster.etcd", "secrets.cluster") if values[name]]
    if values["cluster.name"] is not None or cluster:
        missing = [n for n in ("cluster.name", "cluster.host", "cluster.etcd", "secrets.cluster") if not values[n]]
        if missing and not any(p.startswith(("cluster.", "secrets.cluster")) for p in problems):
            problems.append(f"cluster: also set {', '.join(missing)} (every host of a cluster needs all four)")
    if values["workers.group"] is not None and values["workers.user"] is None:
        problems.append("workers.group: set workers.user too (the group goes with the user children run as)")
    if values["notify.channel"] is not None and values["notify.dm"] is not None:
        problems.append("notify: set channel (LOGGING_CHANNEL) or dm (URBAN_ROBOT_NOTIFY_DM), not both")
    others = {values["secrets.admin_token"], values["secrets.bot_token"]}
    seen: set[str] = set()
    for name, secret in values["secrets.workers"].items():
        if secret in others or secret in seen:  # the admin token would make it an admin; a shared one, two workers
            problems.append(f"secrets.workers: {name}: the same as another secret; give each worker its own")
        seen.add(secret)


def _build(values: Mapping[str, Any], cwd: Path, files: tuple[Path, ...]) -> Config:
    state_dir = values["state_dir"] or cwd / ".urban-robot"
    config = Config(None, values["host"], values["port"], state_dir, values["log_level"], files)
    if values["helium_path"] is None:
        return config
    token = values["secrets.bot_token"]
    settings = Settings(
        token=token,
        vital_cogs=values["workers.vital_cogs"],
        healthy_percentage=values["workers.healthy_percentage"],
        shutdown_if_outdated=values["workers.shutdown_if_outdated"],
        interval=values["workers.interval"],
        grace=values["workers.grace"],
        lease_margin=values["workers.lease_margin"],
        health_timeout=values["workers.health_timeout"],
        gateway_down_limit=values["workers.gateway_down_limit"],
        frozen_limit=values["workers.frozen_limit"],
        hang_limit=values["workers.hang_limit"],
        crash_loop_losses=values["workers.crash_loop_losses"],
        crash_loop_window=values["workers.crash_loop_window"],
        max_connections=values["max_connections"],
        cache_max=values["cache_max"],
        spawn_workers=True,  # serve() always attaches a process manager
    )
    stop = values["workers.stop_timeout"]
    policy = ChildPolicy(
        term_timeout=stop,
        kill_timeout=stop,
        backoff_base=values["workers.restart_backoff"],
        backoff_cap=max(values["workers.restart_backoff"], values["workers.restart_backoff_max"]),
    )
    secret = values["secrets.webhook_secret"]
    cluster = None
    if values["cluster.name"] is not None:
        cluster = ClusterOptions(
            name=values["cluster.name"],
            host=values["cluster.host"],
            etcd=values["cluster.etcd"],
            advertise=values["cluster.advertise"],
            secret=values["secrets.cluster"].encode(),
            timing=Timing(ttl=values["cluster.ttl"]),
        )
    options = Options(
        helium_path=values["helium_path"],
        settings=settings,
        command=values["command"],
        state_dir=state_dir,
        host=values["host"],
        port=values["port"],
        allowed_hosts=values["allowed_hosts"],
        standbys=values["standbys"],
        shard_count=values["shard_count"],
        shards_per_worker=values["shards_per_worker"],
        branch=values["branch"],
        webhook_secret=secret.encode() if secret is not None else None,
        require_deploy_tag=values["require_deploy_tag"],
        poll_interval=values["poll_interval"],
        install=values["install"],
        admin_token=values["secrets.admin_token"],
        worker_secrets=values["secrets.workers"],
        discord_token=token,
        notify_destination=values["notify.dm"] or values["notify.channel"],
        notify_dm=values["notify.dm"] is not None,
        notify_webhook=values["secrets.notify_webhook"],
        discord_log_level=values["notify.level"],
        discord_api_url=values["notify.api_url"],
        policy=policy,
        deploy_timeout=values["deploy_timeout"],
        install_timeout=values["install_timeout"],
        workers_user=values["workers.user"],
        workers_group=values["workers.group"],
        cluster=cluster,
    )
    return attrs.evolve(config, options=options)
