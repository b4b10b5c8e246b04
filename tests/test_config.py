from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest

from urban_robot._errors import UrbanRobotError
from urban_robot.config import KEYS, Config, ConfigError, load_config, read_dotenv
from urban_robot.supervisor._assembly import Options

TOKEN = "MTIz.bot-token-SECRET"
WEBHOOK = "webhook-SECRET-0123456"  # secrets we check ourselves are at least 16 characters
ADMIN = "admin-SECRET-0123456789"
DOCS = Path(__file__).parent.parent / "docs" / "configuration.md"


@pytest.fixture
def bot(tmp_path: Path) -> Path:
    path = tmp_path / "helium"
    path.mkdir()
    return path


def load(
    cwd: Path, flags: dict[str, Any] | None = None, env: dict[str, str] | None = None, config: Path | None = None
) -> Config:
    return load_config(flags or {}, env or {}, config, cwd)


def options(
    cwd: Path, flags: dict[str, Any] | None = None, env: dict[str, str] | None = None, config: Path | None = None
) -> Options:
    result = load(cwd, flags, env, config).options
    assert result is not None
    return result


def problems(cwd: Path, flags: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(cwd, flags, env)
    assert list(caught.value.problems) == str(caught.value).splitlines()
    return str(caught.value).splitlines()


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---- defaults and demo mode ----


def test_nothing_configured_is_demo_mode_with_defaults(tmp_path: Path) -> None:
    config = load(tmp_path)
    assert config.demo and config.options is None
    assert (config.host, config.port, config.state_dir) == ("127.0.0.1", 8080, tmp_path / ".urban-robot")
    assert config.log_level == logging.INFO
    assert config.files == ()


def test_a_real_configuration_gets_the_defaults(tmp_path: Path, bot: Path) -> None:
    config = load(tmp_path, env={"HELIUM_PATH": str(bot), "BOT_TOKEN": TOKEN})
    assert not config.demo
    got = config.options
    assert got is not None
    assert got.helium_path == bot
    assert got.command == (sys.executable, "main.py")
    assert (got.host, got.port, got.state_dir) == ("127.0.0.1", 8080, tmp_path / ".urban-robot")
    assert (got.standbys, got.branch, got.poll_interval, got.install) == (1, "main", None, None)
    assert got.settings.token == got.discord_token == TOKEN
    assert got.settings.spawn_workers
    assert (got.webhook_secret, got.admin_token, got.notify_destination) == (None, None, None)
    assert got.discord_log_level == logging.WARNING


# ---- precedence: flag > environment > urban-robot.toml > .env > default ----


def test_precedence_for_several_keys(tmp_path: Path, bot: Path) -> None:
    write(
        tmp_path / ".env", f"BOT_TOKEN={TOKEN}\nHELIUM_PATH={bot}\nURBAN_ROBOT_PORT=1001\nURBAN_ROBOT_BRANCH=dotenv\n"
    )
    write(tmp_path / ".env", (tmp_path / ".env").read_text() + "URBAN_ROBOT_HOST=0.0.0.1\nURBAN_ROBOT_STANDBYS=4\n")
    write(tmp_path / "urban-robot.toml", 'port = 1002\nbranch = "toml"\nhost = "0.0.0.2"\n')
    env = {"URBAN_ROBOT_PORT": "1003", "URBAN_ROBOT_BRANCH": "environment"}
    got = options(tmp_path, {"port": 1004}, env)
    assert got.port == 1004  # flag beats all
    assert got.branch == "environment"  # environment beats file and .env
    assert got.host == "0.0.0.2"  # file beats .env
    assert got.standbys == 4  # .env beats the default
    assert got.state_dir == tmp_path / ".urban-robot"  # the default


def test_each_layer_alone_sets_a_worker_setting(tmp_path: Path, bot: Path) -> None:
    base = {"HELIUM_PATH": str(bot), "BOT_TOKEN": TOKEN}
    assert options(tmp_path, env=base).settings.interval == 1.0
    write(tmp_path / ".env", "URBAN_ROBOT_WORKERS_INTERVAL=11\n")
    assert options(tmp_path, env=base).settings.interval == 11.0
    write(tmp_path / "urban-robot.toml", "[workers]\ninterval = 12\n")
    assert options(tmp_path, env=base).settings.interval == 12.0
    assert options(tmp_path, env={**base, "URBAN_ROBOT_WORKERS_INTERVAL": "13"}).settings.interval == 13.0
    flags = {"workers.interval": 14.0}
    assert options(tmp_path, flags, {**base, "URBAN_ROBOT_WORKERS_INTERVAL": "13"}).settings.interval == 14.0


def test_flags_given_as_none_count_as_not_given(tmp_path: Path) -> None:
    assert load(tmp_path, {"port": None, "host": None}, {"URBAN_ROBOT_PORT": "9000"}).port == 9000


def test_empty_environment_variables_count_as_unset(tmp_path: Path) -> None:
    write(tmp_path / ".env", "URBAN_ROBOT_PORT=9001\n")
    assert load(tmp_path, env={"URBAN_ROBOT_PORT": ""}).port == 9001


def test_config_file_from_flag_then_environment_then_cwd(tmp_path: Path) -> None:
    write(tmp_path / "urban-robot.toml", "port = 2001\n")
    named = write(tmp_path / "named.toml", "port = 2002\n")
    flagged = write(tmp_path / "flagged.toml", "port = 2003\n")
    assert load(tmp_path).port == 2001
    assert load(tmp_path, env={"URBAN_ROBOT_CONFIG": "named.toml"}).port == 2002
    config = load(tmp_path, env={"URBAN_ROBOT_CONFIG": str(named)}, config=flagged)
    assert (config.port, config.files) == (2003, (flagged,))


def test_the_full_toml_schema(tmp_path: Path, bot: Path) -> None:
    write(
        tmp_path / "urban-robot.toml",
        f"""
helium_path = "{bot}"
command = "python3 -m helium --flag 'two words'"
host = "0.0.0.0"
port = 9090
state_dir = "state"
standbys = 2
branch = "production"
poll_interval = 60
install = ["pip", "install", "-r", "requirements.txt"]
require_deploy_tag = true
log_level = "debug"
deploy_timeout = 30
install_timeout = 120.5
max_connections = 64

[workers]
interval = 10
grace = 5.5
lease_margin = 2
health_timeout = 45
vital_cogs = ["modules.utilities", "modules.music"]
healthy_percentage = 90
shutdown_if_outdated = true
crash_loop_losses = 0
crash_loop_window = 60
restart_backoff = 0.2
restart_backoff_max = 2
stop_timeout = 3

[secrets]
bot_token = "{TOKEN}"
webhook_secret = "{WEBHOOK}"
admin_token = "{ADMIN}"

[notify]
dm = 1234567890
level = "ERROR"
""",
    )
    config = load(tmp_path)
    got = config.options
    assert got is not None and config.log_level == logging.DEBUG
    assert got.command == ("python3", "-m", "helium", "--flag", "two words")
    assert (got.host, got.port, got.state_dir, got.standbys, got.branch) == (
        "0.0.0.0",
        9090,
        tmp_path / "state",
        2,
        "production",
    )
    assert (got.poll_interval, got.install, got.require_deploy_tag) == (
        60.0,
        ("pip", "install", "-r", "requirements.txt"),
        True,
    )
    s = got.settings
    assert (s.interval, s.grace, s.lease_margin, s.health_timeout) == (10.0, 5.5, 2.0, 45.0)
    assert (s.vital_cogs, s.healthy_percentage, s.shutdown_if_outdated) == (
        ("modules.utilities", "modules.music"),
        90.0,
        True,
    )
    assert (s.crash_loop_losses, s.crash_loop_window, got.deploy_timeout, got.install_timeout) == (0, 60.0, 30.0, 120.5)
    assert s.max_connections == 64
    p = got.policy
    assert (p.backoff_base, p.backoff_cap, p.term_timeout, p.kill_timeout) == (0.2, 2.0, 3.0, 3.0)
    assert (s.token, got.webhook_secret, got.admin_token) == (TOKEN, WEBHOOK.encode(), ADMIN)
    assert (got.notify_destination, got.notify_dm, got.discord_log_level) == ("1234567890", True, logging.ERROR)


# ---- the original bot's variables ----


def test_the_original_bots_variables(tmp_path: Path, bot: Path) -> None:
    env = {
        "BOT_TOKEN": TOKEN,
        "LOGGING_CHANNEL": "987654321",
        "LOG_LEVEL": "WARNING",
        "DISCORD_LOG_LEVEL": "info",
        "HELIUM_PATH": str(bot),
    }
    config = load(tmp_path, env=env)
    got = config.options
    assert got is not None
    assert got.helium_path == bot
    assert got.settings.token == got.discord_token == TOKEN
    assert (got.notify_destination, got.notify_dm) == ("987654321", False)
    assert (config.log_level, got.discord_log_level) == (logging.WARNING, logging.INFO)


def test_the_original_bots_dotenv_file(tmp_path: Path, bot: Path) -> None:
    write(
        tmp_path / ".env",
        f"""# the original bot's .env
BOT_TOKEN="{TOKEN}"
export LOGGING_CHANNEL='42'   # trailing comment
HELIUM_PATH = {bot}  # spaces around =
LOG_LEVEL=DEBUG #inline
SOMETHING_THE_BOT_USES=ignored

""",
    )
    config = load(tmp_path, env={"LOG_LEVEL": "ERROR"})
    assert config.options is not None
    assert config.options.settings.token == TOKEN
    assert config.options.notify_destination == "42"
    assert config.log_level == logging.ERROR  # the environment wins over .env


@pytest.mark.parametrize(
    ("source", "log_level", "discord_level"),
    [
        (".env", "LOG_LEVEL=20\nDISCORD_LOG_LEVEL=30\n", None),  # the original bot's .env, word for word
        ("environment", {"LOG_LEVEL": "20", "DISCORD_LOG_LEVEL": " 30 "}, None),
        ("toml", 'log_level = 20\n[notify]\nlevel = "30"\n', None),
        ("flags", {"log_level": "20", "notify.level": "30"}, None),
        ("names", {"LOG_LEVEL": "info", "DISCORD_LOG_LEVEL": "WARNING"}, None),
    ],
)
def test_log_levels_are_numbers_or_names_from_every_source(
    tmp_path: Path, bot: Path, source: str, log_level: Any, discord_level: Any
) -> None:
    env = {"BOT_TOKEN": TOKEN, "HELIUM_PATH": str(bot)}
    flags: dict[str, Any] = {}
    if source == ".env":
        write(tmp_path / ".env", log_level)
    elif source == "toml":
        write(tmp_path / "urban-robot.toml", log_level)
    elif source == "flags":
        flags = log_level
    else:
        env.update(log_level)
    config = load(tmp_path, flags, env)
    assert config.options is not None
    assert (config.log_level, config.options.discord_log_level) == (logging.INFO, logging.WARNING)


def test_a_numeric_level_is_a_threshold_as_in_the_original(tmp_path: Path) -> None:
    """Any integer works as logging's threshold does: records at that level and above pass."""
    assert load(tmp_path, env={"LOG_LEVEL": "25"}).log_level == 25
    assert load(tmp_path, env={"LOG_LEVEL": "0"}).log_level == logging.NOTSET  # everything
    for bad in ("-5", "2O", "loud", "20.5"):
        [line] = problems(tmp_path, env={"LOG_LEVEL": bad})
        assert line == (
            f"log_level: expected a log level (DEBUG, INFO, WARNING, ERROR, CRITICAL) or a number such as 20,"
            f" got {bad!r} (from LOG_LEVEL)"
        )


def test_the_original_dotenv_no_longer_stops_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from urban_robot.__main__ import main

    monkeypatch.chdir(tmp_path)
    write(tmp_path / ".env", "LOG_LEVEL=20\nDISCORD_LOG_LEVEL=30\nLOGGING_CHANNEL=\n")
    assert main(["status", "--url", "http://127.0.0.1:9"]) == 1  # read the configuration, found no supervisor: not 2


# ---- external workers' secrets ----

EXT = "ext-worker-secret-0123456789"


def test_worker_secrets_from_toml_environment_and_dotenv_merge_by_name(tmp_path: Path, bot: Path) -> None:
    write(tmp_path / "urban-robot.toml", f'[secrets.workers]\neu = "toml-{EXT}"\nus = "toml-us-{EXT}"\n')
    write(
        tmp_path / ".env", f"URBAN_ROBOT_WORKER_SECRET_asia=dotenv-{EXT}\nURBAN_ROBOT_WORKER_SECRET_us=dotenv-{EXT}\n"
    )
    env = {"BOT_TOKEN": TOKEN, "HELIUM_PATH": str(bot), "URBAN_ROBOT_WORKER_SECRET_eu": f"env-{EXT}"}
    got = options(tmp_path, env=env)
    assert got.worker_secrets == {"eu": f"env-{EXT}", "us": f"toml-us-{EXT}", "asia": f"dotenv-{EXT}"}
    assert EXT not in repr(got)


@pytest.mark.parametrize(
    ("toml", "env", "expected"),
    [
        (
            '[secrets.workers]\neu = "short"\n',
            {},
            "secrets.workers: eu: expected at least 16 characters (value hidden)",
        ),
        (
            "",
            {"URBAN_ROBOT_WORKER_SECRET_eu": f"has a space {EXT}"},
            "secrets.workers: eu: expected printable ASCII without spaces (value hidden)"
            " (from URBAN_ROBOT_WORKER_SECRET_<NAME>)",
        ),
        ('[secrets.workers]\n"a b" = "x"\n', {}, "secrets.workers: 'a b': a worker name is 1-64 letters"),
        ('[secrets]\nworkers = "x"\n', {}, "secrets.workers: expected a table of NAME = secret, got 'str'"),
        (
            "",
            {"URBAN_ROBOT_WORKER_SECRET_eu": ADMIN + EXT, "URBAN_ROBOT_ADMIN_TOKEN": ADMIN + EXT},
            "secrets.workers: eu: the same as another secret; give each worker its own",
        ),
    ],
)
def test_a_bad_worker_secret_is_one_line_that_never_shows_it(
    tmp_path: Path, bot: Path, toml: str, env: dict[str, str], expected: str
) -> None:
    if toml:
        write(tmp_path / "urban-robot.toml", toml)
    [line] = problems(tmp_path, env={"BOT_TOKEN": TOKEN, "HELIUM_PATH": str(bot), **env})
    assert line.startswith(expected), line
    assert EXT not in line and "short" not in line.split(": ", 1)[1].replace("16 characters", "")


def test_read_dotenv_keeps_quoted_hashes_and_reports_bad_lines(tmp_path: Path) -> None:
    path = write(tmp_path / ".env", f"A='x # y'\nB=\"{TOKEN}\nnot a variable\n=x\nC='a' b\n")
    found: list[str] = []
    assert read_dotenv(path, found) == {"A": "x # y"}
    assert found == [
        f'{path}:2: unclosed " quote',
        f"{path}:3: expected KEY=VALUE",
        f"{path}:4: expected KEY=VALUE",
        f"{path}:5: unexpected text after the closing quote",
    ]
    assert TOKEN not in "".join(found)


# ---- validation: every problem, one line each ----


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"URBAN_ROBOT_PORT": "eighty"}, "port: expected an integer 0-65535, got 'eighty' (from URBAN_ROBOT_PORT)"),
        ({"URBAN_ROBOT_PORT": "70000"}, "port: expected an integer 0-65535, got '70000' (from URBAN_ROBOT_PORT)"),
        ({"URBAN_ROBOT_STANDBYS": "-1"}, "standbys: expected an integer >= 0, got '-1' (from URBAN_ROBOT_STANDBYS)"),
        ({"URBAN_ROBOT_HOST": "  "}, "host: expected a non-empty string, got '  ' (from URBAN_ROBOT_HOST)"),
        (
            {"URBAN_ROBOT_REQUIRE_DEPLOY_TAG": "maybe"},
            "require_deploy_tag: expected true or false, got 'maybe' (from URBAN_ROBOT_REQUIRE_DEPLOY_TAG)",
        ),
        (
            {"URBAN_ROBOT_POLL_INTERVAL": "-5"},
            "poll_interval: expected a number of seconds >= 0 (0 = off), got '-5' (from URBAN_ROBOT_POLL_INTERVAL)",
        ),
        (
            {"URBAN_ROBOT_WORKERS_INTERVAL": "0"},
            "workers.interval: expected a number of seconds > 0, got '0' (from URBAN_ROBOT_WORKERS_INTERVAL)",
        ),
        (
            {"URBAN_ROBOT_WORKERS_GRACE": "nan"},
            "workers.grace: expected a number of seconds >= 0, got 'nan' (from URBAN_ROBOT_WORKERS_GRACE)",
        ),
        (
            {"URBAN_ROBOT_WORKERS_HEALTHY_PERCENTAGE": "101"},
            "workers.healthy_percentage: expected a number 0-100, got '101'"
            " (from URBAN_ROBOT_WORKERS_HEALTHY_PERCENTAGE)",
        ),
        (
            {"LOG_LEVEL": "LOUD"},
            "log_level: expected a log level (DEBUG, INFO, WARNING, ERROR, CRITICAL) or a number such as 20,"
            " got 'LOUD' (from LOG_LEVEL)",
        ),
        (
            {"LOGGING_CHANNEL": "#general"},
            "notify.channel: expected a Discord id (a number), got '#general' (from LOGGING_CHANNEL)",
        ),
        (
            {"URBAN_ROBOT_COMMAND": "python 'main.py"},
            'command: expected a command line (a string or a list of strings), got "python \'main.py"'
            " (from URBAN_ROBOT_COMMAND)",
        ),
        (
            {"BOT_TOKEN": "has a space"},
            "secrets.bot_token: expected printable ASCII without spaces (value hidden) (from BOT_TOKEN)",
        ),
        (
            {"LOGGING_CHANNEL": "1", "URBAN_ROBOT_NOTIFY_DM": "2"},
            "notify: set channel (LOGGING_CHANNEL) or dm (URBAN_ROBOT_NOTIFY_DM), not both",
        ),
    ],
)
def test_each_bad_value_is_one_line(tmp_path: Path, env: dict[str, str], message: str) -> None:
    assert problems(tmp_path, env=env) == [message]


def test_helium_path_must_be_an_existing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    assert problems(tmp_path, env={"HELIUM_PATH": str(missing), "BOT_TOKEN": TOKEN}) == [
        f"helium_path: {missing} does not exist (from HELIUM_PATH)"
    ]
    afile = write(tmp_path / "file", "")
    assert problems(tmp_path, {"helium_path": "file"}, {"BOT_TOKEN": TOKEN}) == [
        f"helium_path: {afile} is not a directory (from --helium-path)"
    ]


def test_bot_token_is_required_with_a_helium_path(tmp_path: Path, bot: Path) -> None:
    assert problems(tmp_path, env={"HELIUM_PATH": str(bot)}) == [
        "secrets.bot_token: required to supervise helium_path; set BOT_TOKEN (environment or .env)"
    ]


def test_wrong_types_in_the_toml_file(tmp_path: Path) -> None:
    path = write(tmp_path / "urban-robot.toml", 'port = "eighty"\nstandbys = true\nworkers = 3\ncommand = [1]\n')
    assert problems(tmp_path) == [
        f"workers: expected a table [workers], got 3 (from {path})",
        f"command: expected a command line (a string or a list of strings), got [1] (from {path})",
        f"port: expected an integer 0-65535, got 'eighty' (from {path})",
        f"standbys: expected an integer >= 0, got True (from {path})",
    ]


def test_unknown_keys_in_the_toml_file_are_problems(tmp_path: Path) -> None:
    path = write(tmp_path / "urban-robot.toml", "prot = 1\n[workers]\nintreval = 2\n[worker]\ninterval = 3\n")
    assert problems(tmp_path) == [
        f"prot: unknown key (in {path}); see docs/configuration.md",
        f"workers.intreval: unknown key (in {path}); see docs/configuration.md",
        f"worker: unknown key (in {path}); see docs/configuration.md",
    ]


def test_unknown_flag_keys_are_problems(tmp_path: Path) -> None:
    assert problems(tmp_path, {"prot": 1}) == ["prot: unknown key (from the command line)"]


def test_a_toml_syntax_error_is_one_line_with_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "urban-robot.toml", f'port = 1\n[secrets]\nbot_token = "{TOKEN}\n')
    (line,) = problems(tmp_path)
    assert re.fullmatch(rf"{re.escape(str(path))}: invalid TOML: .+ \(at line 3, column \d+\)", line)
    assert TOKEN not in line


def test_a_named_config_file_must_exist(tmp_path: Path) -> None:
    assert problems(tmp_path, env={"URBAN_ROBOT_CONFIG": "gone.toml"}) == [
        f"config: {tmp_path / 'gone.toml'} does not exist"
    ]
    with pytest.raises(ConfigError, match=r"^config: /nowhere/x\.toml does not exist$"):
        load(tmp_path, config=Path("/nowhere/x.toml"))


def test_all_problems_are_reported_together(tmp_path: Path, bot: Path) -> None:
    write(tmp_path / ".env", "oops\n")
    toml = write(tmp_path / "urban-robot.toml", f'helium_path = "{bot}"\ntypo = 1\n[notify]\nlevel = "LOUD"\n')
    found = problems(tmp_path, {"port": "eighty"}, {"URBAN_ROBOT_STANDBYS": "many"})
    assert found == [
        f"{tmp_path / '.env'}:1: expected KEY=VALUE",
        f"typo: unknown key (in {toml}); see docs/configuration.md",
        "port: expected an integer 0-65535, got 'eighty' (from --port)",
        "standbys: expected an integer >= 0, got 'many' (from URBAN_ROBOT_STANDBYS)",
        f"notify.level: expected a log level (DEBUG, INFO, WARNING, ERROR, CRITICAL) or a number such as 20,"
        f" got 'LOUD' (from {toml})",
        "secrets.bot_token: required to supervise helium_path; set BOT_TOKEN (environment or .env)",
    ]


def test_config_error_is_an_urban_robot_error(tmp_path: Path) -> None:
    with pytest.raises(UrbanRobotError):
        load(tmp_path, {"port": -1})


# ---- secrets stay secret ----


def test_secrets_never_in_a_repr(tmp_path: Path, bot: Path) -> None:
    env = {
        "HELIUM_PATH": str(bot),
        "BOT_TOKEN": TOKEN,
        "URBAN_ROBOT_WEBHOOK_SECRET": WEBHOOK,
        "URBAN_ROBOT_ADMIN_TOKEN": ADMIN,
    }
    config = load(tmp_path, env=env)
    for text in (repr(config), repr(config.options), str(config.options)):
        assert "SECRET" not in text
    assert config.options is not None and config.options.admin_token == ADMIN


def test_secrets_never_in_error_messages(tmp_path: Path) -> None:
    bad = "bad token hunter2"
    write(tmp_path / "urban-robot.toml", f'[secrets]\nbot_token = "{bad}"\nwebhook_secret = ""\nadmin_token = 5\n')
    env = {"URBAN_ROBOT_WEBHOOK_SECRET": "x\thunter2", "HELIUM_PATH": str(tmp_path / "gone")}
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, env=env)
    message = str(caught.value)
    assert "hunter2" not in message and "5" not in message.replace(str(tmp_path), "")
    assert len(message.splitlines()) == 4
    assert "secrets.admin_token: expected a non-empty string (value hidden)" in message


# ---- documentation ----


def test_every_key_is_documented() -> None:
    docs = DOCS.read_text()
    for key in KEYS:
        row = next((line for line in docs.splitlines() if line.startswith(f"| `{key.name}`")), None)
        assert row is not None, key.name
        assert f"`{key.env}`" in row, key.name
        assert (f"`{key.flag}`" if key.flag else "never a flag") in row, key.name


def test_the_discord_api_url_reaches_the_notifier_options(tmp_path: Path, bot: Path) -> None:
    env = {"BOT_TOKEN": TOKEN, "HELIUM_PATH": str(bot)}
    assert options(tmp_path, env=env).discord_api_url == "https://discord.com/api/v10"
    env["URBAN_ROBOT_DISCORD_API_URL"] = "http://127.0.0.1:9999/api/v10/"
    assert options(tmp_path, env=env).discord_api_url == "http://127.0.0.1:9999/api/v10"
    with pytest.raises(ConfigError, match=r"notify.api_url: expected an http:// or https:// URL"):
        options(tmp_path, env={**env, "URBAN_ROBOT_DISCORD_API_URL": "discord.com"})


def test_gateway_down_limit_from_every_layer(tmp_path: Path, bot: Path) -> None:
    base = {"HELIUM_PATH": str(bot), "BOT_TOKEN": "token"}
    assert options(tmp_path, env=base).settings.gateway_down_limit == 3.0
    toml = write(tmp_path / "urban-robot.toml", "[workers]\ngateway_down_limit = 1.5\n")
    assert options(tmp_path, env=base, config=toml).settings.gateway_down_limit == 1.5
    env = base | {"URBAN_ROBOT_WORKERS_GATEWAY_DOWN_LIMIT": "0"}  # 0: hand over as soon as the Gateway is down
    assert options(tmp_path, env=env, config=toml).settings.gateway_down_limit == 0.0
    flags = {"workers.gateway_down_limit": 7}
    assert options(tmp_path, flags=flags, env=env, config=toml).settings.gateway_down_limit == 7.0
    bad = base | {"URBAN_ROBOT_WORKERS_GATEWAY_DOWN_LIMIT": "-1"}
    assert [p.split(": ")[0] for p in problems(tmp_path, env=bad)] == ["workers.gateway_down_limit"]


def test_allowed_hosts_are_read_as_names_and_reach_the_options(tmp_path: Path) -> None:
    bot = tmp_path / "bot"
    bot.mkdir()
    environ = {"BOT_TOKEN": "t" * 20, "URBAN_ROBOT_ALLOWED_HOSTS": "Bot.Example.org, other.example"}
    config = load_config({"helium_path": str(bot)}, environ, None, tmp_path)
    assert config.options is not None
    assert config.options.allowed_hosts == ("bot.example.org", "other.example")
    with pytest.raises(ConfigError, match="allowed_hosts: expected host names"):
        load_config({"helium_path": str(bot)}, environ | {"URBAN_ROBOT_ALLOWED_HOSTS": "https://x/"}, None, tmp_path)


@pytest.mark.parametrize("name", ["URBAN_ROBOT_ADMIN_TOKEN", "URBAN_ROBOT_WEBHOOK_SECRET"])
def test_an_admin_token_or_webhook_secret_shorter_than_16_characters_is_refused_in_one_line(
    tmp_path: Path, name: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({}, {name: "x"}, None, tmp_path)
    assert len(caught.value.problems) == 1
    assert "at least 16 characters" in str(caught.value) and "'x'" not in str(caught.value)


def test_a_string_valued_secrets_key_is_never_echoed(tmp_path: Path) -> None:
    (tmp_path / "urban-robot.toml").write_text('secrets = "hunter2-the-admin-token"\n')
    with pytest.raises(ConfigError) as caught:
        load_config({}, {}, None, tmp_path)
    assert "hunter2" not in str(caught.value)
    assert "secrets: expected a table [secrets]" in str(caught.value)


@pytest.mark.parametrize("name", ["urban-robot.toml", ".env"])
def test_a_file_in_the_working_directory_others_can_write_is_ignored_with_a_reason(
    tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    planted = tmp_path / name
    planted.write_text("port = 6666\n" if name.endswith(".toml") else "URBAN_ROBOT_PORT=6666\n")
    planted.chmod(0o666)
    config = load_config({}, {}, None, tmp_path)
    assert config.port == 8080 and planted not in config.files
    assert [r.getMessage() for r in caplog.records] == [
        f"ignoring {planted}: others can write it (chmod go-w {planted} to use it)"
    ]
    planted.chmod(0o644)
    assert load_config({}, {}, None, tmp_path).port == 6666


@pytest.mark.skipif(os.getuid() != 0, reason="giving a file to another user needs root")
def test_a_file_in_the_working_directory_another_user_owns_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "urban-robot.toml").write_text("port = 6666\n")
    (tmp_path / ".env").write_text("URBAN_ROBOT_PORT=6667\n")
    os.chown(tmp_path / "urban-robot.toml", 4242, 4242)
    os.chown(tmp_path / ".env", 4242, 4242)
    assert load_config({}, {}, None, tmp_path).port == 8080


# ---- the notification webhook ----

HOOK = "https://discord.com/api/webhooks/1122334455667788/hook-SECRET-0123456789"


def test_the_notification_webhook_from_environment_toml_or_dotenv(tmp_path: Path, bot: Path) -> None:
    env = {"BOT_TOKEN": TOKEN, "HELIUM_PATH": str(bot)}
    assert options(tmp_path, env=env).notify_webhook is None
    got = options(tmp_path, env={**env, "URBAN_ROBOT_NOTIFY_WEBHOOK": HOOK}).notify_webhook
    assert got is not None and (got.url, got.id) == (HOOK, "1122334455667788")
    write(tmp_path / "urban-robot.toml", f'[secrets]\nnotify_webhook = "{HOOK}/"\n')
    from_toml = options(tmp_path, env=env)
    assert from_toml.notify_webhook == got
    assert (from_toml.notify_destination, from_toml.discord_log_level) == (None, logging.WARNING)  # alone: fine
    for text in (repr(from_toml), str(load(tmp_path, env=env))):
        assert "SECRET" not in text


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("discord.com/api/webhooks/1/hook-SECRET", "not an http:// or https:// URL"),
        ("https://discord.com/api/channels/1/hook-SECRET", "its path does not end in /webhooks/<id>/<token>"),
        ("https://discord.com/api/webhooks/1/hook-SECRET?thread_id=2", "a user@, ?query or #fragment in it"),
    ],
)
def test_a_bad_notification_webhook_is_one_line_that_never_shows_it(
    tmp_path: Path, bot: Path, value: str, problem: str
) -> None:
    env = {"BOT_TOKEN": TOKEN, "HELIUM_PATH": str(bot), "URBAN_ROBOT_NOTIFY_WEBHOOK": value}
    assert problems(tmp_path, env=env) == [
        f"secrets.notify_webhook: {problem}: expected https://discord.com/api/webhooks/<id>/<token> (a channel's "
        "Integrations → Webhooks → Copy Webhook URL) (value hidden) (from URBAN_ROBOT_NOTIFY_WEBHOOK)"
    ]
    write(tmp_path / "urban-robot.toml", "[secrets]\nnotify_webhook = 5\n")
    assert problems(tmp_path, env={**env, "URBAN_ROBOT_NOTIFY_WEBHOOK": ""})[0].startswith(
        "secrets.notify_webhook: expected a webhook URL, a string (value hidden)"
    )


def test_the_notification_webhook_is_a_secret_for_the_log_redactor(tmp_path: Path, bot: Path) -> None:
    from urban_robot._bootstrap import prepare
    from urban_robot.logs import Redactor

    env = {"BOT_TOKEN": TOKEN, "HELIUM_PATH": str(bot), "URBAN_ROBOT_NOTIFY_WEBHOOK": HOOK}
    configured = attrs.evolve(options(tmp_path, env=env), state_dir=tmp_path / "state")
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        assert not isinstance(prepare(configured, logging.INFO, "text"), int)
        [handler] = [h for h in root.handlers if h not in before]
        [redactor] = [f for f in handler.filters if isinstance(f, Redactor)]
        assert redactor.redact(f"POST {HOOK}?wait=true") == (
            "POST https://discord.com/api/webhooks/1122334455667788/[redacted]?wait=true"
        )
    finally:
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)
