"""The documentation's examples, run: one reference layout everywhere, a unit systemd accepts with it, the
documented install step working on a PEP 668 system, and no example that hands the secrets to the workers."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
DOCS = {name: (ROOT / name).read_text() for name in ("README.md", "docs/deploying.md", "docs/deployment.md")}
DOCS["docs/configuration.md"] = (ROOT / "docs/configuration.md").read_text()
LAYOUT = {  # docs/deploying.md §2, "The reference layout"
    "/opt/urban-robot": "Urban Robot's checkout and virtualenv",
    "/srv/urban-robot": "the supervisor's directory",
    "/srv/helium": "the bot's checkout",
    "/var/lib/urban-robot": "the state directory",
}


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def unit() -> str:
    [ini] = blocks(DOCS["docs/deployment.md"], "ini")
    return ini


def test_the_reference_layout_is_the_one_every_document_uses() -> None:
    table = DOCS["docs/deploying.md"].split("**The reference layout.**")[1].split("```")[0]
    assert all(f"`{path}/`" in table for path in LAYOUT)
    for name, text in DOCS.items():
        for key, value in re.findall(r'^\s*(helium_path|state_dir) = "([^"]+)"', text, re.M):
            assert value == {"helium_path": "/srv/helium", "state_dir": "/var/lib/urban-robot"}[key], (name, key)
        for stale in ("/srv/urban-robot/.venv", "/path/to/urban-robot", "secrets.env"):
            assert stale not in text, (name, stale)
    paths = re.findall(r"=(/\S+)", unit())
    assert paths and all(any(path.startswith(prefix) for prefix in LAYOUT) for path in paths), paths


def test_no_example_hands_the_secrets_to_the_workers() -> None:
    """Secrets live in .env (read by the supervisor only), never exported, prefixed to a command, or set by
    systemd's Environment=/EnvironmentFile= (all of which the workers inherit)."""
    secret = r"(BOT_TOKEN|[A-Z_]*(SECRET|ADMIN_TOKEN)[A-Z_]*)"
    for name, text in DOCS.items():
        assert not re.search(rf"^[ \t]*export[ \t]+{secret}=", text, re.M), name
        assert not re.search(rf"^[ \t]*{secret}=\S*[ \t]+[^#\s]", text, re.M), name  # VAR=... command
        assert "Environment=" not in unit() and "EnvironmentFile=" not in unit()


def layout_root(tmp_path: Path) -> Path:
    """The reference layout under ``tmp_path``, as the documented set-up makes it (the program a stub)."""
    for path in LAYOUT:
        (tmp_path / path.lstrip("/")).mkdir(parents=True)
    program = tmp_path / "opt/urban-robot/.venv/bin/urban-robot"
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    return tmp_path


def relocated(text: str, root: Path) -> str:
    for path in LAYOUT:
        text = text.replace(path, f"{root}{path}")
    return text


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_documented_unit_passes_systemd_analyze_verify_with_the_reference_layout(tmp_path: Path) -> None:
    root = layout_root(tmp_path)
    service = tmp_path / "urban-robot.service"
    service.write_text(relocated(unit(), root))
    done = subprocess.run(["systemd-analyze", "verify", str(service)], capture_output=True, text=True)
    ours = [line for line in (done.stdout + done.stderr).splitlines() if "urban-robot.service" in line]
    assert done.returncode == 0 and not ours, done.stdout + done.stderr
    # What deployment.md says of a trailing comment: a warning, and exit status 0.
    service.write_text(relocated(unit(), root).replace("RestartSec=2", "RestartSec=2  # seconds"))
    done = subprocess.run(["systemd-analyze", "verify", str(service)], capture_output=True, text=True)
    assert done.returncode == 0 and "Failed to parse sec value, ignoring: 2  # seconds" in done.stderr
    # ... and of a program from another layout: exit status 1.
    service.write_text(unit().replace("/opt/urban-robot/", f"{root}/srv/urban-robot/"))
    assert subprocess.run(["systemd-analyze", "verify", str(service)], capture_output=True).returncode == 1


@pytest.mark.slow
@pytest.mark.parametrize("document", ["docs/configuration.md", "docs/deploying.md", "README.md"])
def test_the_documented_install_step_installs_into_the_release_venv(document: str, tmp_path: Path) -> None:
    """The ``install`` of each document's example, run as the deployer runs it, in a release directory,
    without touching the system's Python (PEP 668) and without the network: a local package is installed
    into the release's own venv."""
    [line] = {line.strip() for line in re.findall(r"^install = .*$", DOCS[document], re.M)}
    install = tomllib.loads(line)["install"]
    wheel = _tiny_wheel(tmp_path)
    release = tmp_path / "release"
    release.mkdir()
    (release / "requirements.txt").write_text(f"tinydep @ {wheel.as_uri()}\n")
    env = os.environ | {"PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PATH": _path_without_venvs()}
    subprocess.run(install, cwd=release, env=env, check=True, capture_output=True, timeout=300)
    imported = subprocess.run([".venv/bin/python", "-c", "import tinydep; print(tinydep.VALUE)"], cwd=release)
    assert imported.returncode == 0


def _path_without_venvs() -> str:
    """PATH as a fresh login has it: ``python3`` is the system's (which refuses a bare pip install)."""
    venv = str(Path(sys.executable).parent)
    return os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != venv)


def _tiny_wheel(directory: Path) -> Path:
    from tests.supervisor.test_operator_day import tiny_wheel

    return tiny_wheel(directory)


def cluster_part() -> str:
    return DOCS["docs/deployment.md"].split("## Several hosts with etcd")[1]


def test_the_cluster_example_configures_an_agent(tmp_path: Path) -> None:
    """deployment.md's ``[cluster]`` example, with its ``.env``, loads as the agent of ``bot-a``: the cluster's
    name, the host's name, the three etcd members, its advertised URL, no extra standby, the default TTL."""
    from urban_robot.config import ConfigError, load_config

    [toml] = [block for block in blocks(cluster_part(), "toml") if "[cluster]" in block]
    root = layout_root(tmp_path)
    path = tmp_path / "urban-robot.toml"
    path.write_text(relocated(toml, root))
    [dotenv] = [block for block in blocks(cluster_part(), "sh") if "URBAN_ROBOT_CLUSTER_SECRET=" in block]
    names = re.findall(r"^([A-Z_]+)=\.\.\.$", dotenv, re.M)
    assert names == ["BOT_TOKEN", "URBAN_ROBOT_WEBHOOK_SECRET", "URBAN_ROBOT_CLUSTER_SECRET"]
    environ = {name: f"{name.lower()}-{'x' * 16}" for name in names}
    options = load_config({}, environ, path, tmp_path).options
    assert options is not None and options.cluster is not None
    cluster = options.cluster
    assert (cluster.name, cluster.host, cluster.advertise) == ("helium", "bot-a", "http://10.0.0.1:8080")
    assert cluster.etcd == ("http://10.0.0.1:2379", "http://10.0.0.2:2379", "http://10.0.0.3:2379")
    assert options.standbys == 0 and options.host == "10.0.0.1"
    assert cluster.secret == environ["URBAN_ROBOT_CLUSTER_SECRET"].encode()
    # Without the cluster's secret the host refuses to start, naming what is missing, in the guide's words.
    refusal = "cluster: also set secrets.cluster (every host of a cluster needs all four)"
    assert f"`{refusal}`" in cluster_part()
    without = {k: v for k, v in environ.items() if k != "URBAN_ROBOT_CLUSTER_SECRET"}
    with pytest.raises(ConfigError, match=re.escape(refusal)):
        load_config({}, without, path, tmp_path)


def test_the_cluster_guide_s_timings_are_the_defaults() -> None:
    """The figures the guide gives (TTL, keep-alive period, the view's 8.9 s) follow from the code's defaults."""
    from urban_robot.cluster._lease import Timing

    t = Timing()
    text = cluster_part()
    assert f"`cluster.ttl` = {t.ttl} s" in text
    assert f"{t.ttl * (1 - t.drift) - t.margin:.1f} s after the last keep-alive etcd answered" in text
    assert f"keep-alives go every {t.keepalive_every:g} s" in text


@pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd is not installed (Debian: etcd-server)")
def test_the_cluster_guide_s_etcd_settings_are_etcd_s() -> None:
    """Each ETCD_* line of /etc/default/etcd in the guide names a flag that etcd has (a typo there is ignored
    by etcd only with a warning in its log)."""
    [settings] = [block for block in blocks(cluster_part(), "sh") if "ETCD_INITIAL_CLUSTER=" in block]
    names = re.findall(r"^ETCD_([A-Z_]+)=\S+$", settings, re.M)
    assert len(names) == len(settings.strip().splitlines()) >= 9
    usage = subprocess.run(["etcd", "--help"], capture_output=True, text=True).stdout
    for name in names:
        assert f"--{name.lower().replace('_', '-')}" in usage, name
