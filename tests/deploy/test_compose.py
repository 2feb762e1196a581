"""docker-compose.yml, the Procfile and the Dockerfile, checked without a Docker engine.

What the deployment must give: Redis (noeviction, AOF), PostgreSQL, a one-shot migration, web, worker
pools, one beat, Flower with basic auth bound to localhost, all with healthchecks; a documented way to
scale a pool; workers that send events (Flower); a Redis visibility timeout above the longest step.

The compose file is read with PyYAML and interpolated as compose does (``${VAR:-default}``,
``${VAR:?error}``, ``$$``). Each command it runs is parsed by the program it names: the ``autopack``
argparse parser, Celery's click CLI with the real ``tasks`` app, Flower's own options. The commands
and healthchecks that are cheap to run are run here: the migration (twice, on SQLite and on a fresh
PostgreSQL database), web, a worker, beat and Flower on the local profile in a private state folder
(so no Redis database is shared), and ``redis-server`` with the compose arguments on a private port.
``docker compose config`` runs only where the compose plugin is installed (it needs no engine).
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from autopack.settings import ROOT, Settings
from tasks.app import QUEUES, ROUTES, celery_config, queue_time_limit
from tasks.app import app as celery_app
from tests.conftest import REQUIRE

COMPOSE_FILE = ROOT / "docker-compose.yml"
PROCFILE = ROOT / "Procfile"
DOCKERFILE = ROOT / "Dockerfile"
VENV_BIN = Path(sys.executable).parent

# The operator's environment (.env) in these tests: only what the file says it needs.
COMPOSE_ENV = {"FLOWER_BASIC_AUTH": "ops:compose-test-secret"}
PROCFILE_ENV = {"PORT": "8000", "FLOWER_PORT": "5555", "AUTOPACK_STATE_DIR": "/srv/autopack", "FLOWER_BASIC_AUTH": "ops:pw"}
# The steps that run the target's tests in the bubblewrap sandbox (engine/steps.py, _run_tests).
SANDBOX_STEPS = ("baseline", "probe")


# ------------------------------------------------------------------------------------------ reading


class MissingVariable(ValueError):
    """A ``${VAR:?message}`` whose variable is unset: compose refuses the file."""


_TOKEN = re.compile(
    r"\$(?:(?P<esc>\$)|\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|(?P<bare>[A-Za-z_]\w*))"
)


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's (and the shell's) variable substitution, applied to every string of ``value``."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        if m["esc"]:
            return "$"
        name, op = m["name"] or m["bare"], m["op"]
        current = env.get(name)
        if op is None:
            return current or ""
        unset = current is None or (op.startswith(":") and current == "")
        if op.endswith("-"):
            return m["arg"] if unset else current  # type: ignore[return-value]
        if unset:
            raise MissingVariable(f"{name}: {m['arg']}")
        return current  # type: ignore[return-value]

    return _TOKEN.sub(one, value)


@cache
def raw_compose() -> dict[str, Any]:
    """The file as written (anchors and merge keys resolved, nothing interpolated)."""
    return yaml.safe_load(COMPOSE_FILE.read_text())  # type: ignore[no-any-return]


def compose(env: Mapping[str, str] = COMPOSE_ENV) -> dict[str, Any]:
    return interpolate(raw_compose(), env)  # type: ignore[no-any-return]


@cache
def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]  # type: ignore[no-any-return]


def argv(command: str | list[Any] | None) -> list[str]:
    if command is None:
        return []
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def assignments(line: str) -> list[dict[str, str]]:
    """Per simple command of a shell line, the ``NAME=value`` assignments before its program."""
    out = []
    for words in _simple_commands(line):
        env: dict[str, str] = {}
        for word in words:
            if not ASSIGNMENT.match(word):
                break
            name, _, value = word.partition("=")
            env[name] = value
        out.append(env)
    return out


def shell_commands(line: str) -> list[list[str]]:
    """The simple commands of a shell line (split on ``&& || ; |``), redirections and leading
    ``NAME=value`` assignments dropped."""
    out = []
    for words in _simple_commands(line):
        while words and ASSIGNMENT.match(words[0]):
            words = words[1:]
        if words:
            out.append(words)
    return out


def _simple_commands(line: str) -> list[list[str]]:
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    commands: list[list[str]] = [[]]
    tokens = list(lex)
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok in ("&&", "||", ";", "|"):
            commands.append([])
        elif tok in (">", ">>", "<", "2>", ">&"):
            i += 1  # and its target
        else:
            commands[-1].append(tok)
        i += 1
    return [c for c in commands if c]


def healthcheck_commands(test: list[str] | str) -> list[list[str]]:
    if isinstance(test, str):
        return shell_commands(test)
    if test[0] == "CMD":
        return [list(test[1:])]
    assert test[0] == "CMD-SHELL", test
    return shell_commands(test[1])


@dataclass
class CeleryCommand:
    app: Any
    sub: str
    params: dict[str, Any]
    global_params: dict[str, Any]


def parse_celery(args: list[str]) -> CeleryCommand:
    """Parse a ``celery …`` command line as the celery program would (the app is imported), without running it."""
    from celery.app.utils import find_app
    from celery.bin.base import CLIContext
    from celery.bin.celery import celery as cli

    assert args[0] == "celery", args
    ctx = cli.make_context("celery", list(args[1:]))
    protected = getattr(ctx, "_protected_args", None)
    rest = [*(protected if protected is not None else ctx.protected_args), *ctx.args]
    app = find_app(ctx.params["app"]) if ctx.params.get("app") else None
    ctx.obj = CLIContext(app=app, no_color=True, workdir=None, quiet=True)
    name, cmd, sub_args = cli.resolve_command(ctx, rest)
    assert name is not None and cmd is not None, f"celery has no command {rest[:1]}"
    sub = cmd.make_context(name, sub_args, parent=ctx)
    return CeleryCommand(app=app, sub=name, params=dict(sub.params), global_params=dict(ctx.params))


def flower_options(tornado_argv: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    args = list(tornado_argv)
    while args:
        arg = args.pop(0)
        assert arg.startswith("--"), f"flower takes --name=value options, not {arg!r}"
        name, eq, value = arg[2:].partition("=")
        out[name.replace("-", "_")] = value if eq else (args.pop(0) if args and not args[0].startswith("--") else "")
    return out


def role(svc: dict[str, Any]) -> str:
    image = str(svc.get("image", "")).split(":")[0]
    if image in ("redis", "postgres"):
        return image
    args = argv(svc.get("command"))
    if args[:1] == ["autopack"]:
        return args[1]
    if args[:1] == ["celery"]:
        return parse_celery(args).sub
    return f"unknown: {args}"


def by_role(name: str) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in services().items() if role(s) == name}


def procfile() -> dict[str, str]:
    from honcho.environ import parse_procfile

    return dict(parse_procfile(PROCFILE.read_text()).processes)


def procfile_celery(env: Mapping[str, str] = PROCFILE_ENV) -> dict[str, CeleryCommand]:
    out = {}
    for name, line in procfile().items():
        for cmd in shell_commands(interpolate(line, env)):
            if cmd[0] == "celery":
                out[name] = parse_celery(cmd)
    return out


def depends_on(svc: dict[str, Any]) -> dict[str, str]:
    deps = svc.get("depends_on") or {}
    if isinstance(deps, list):  # short syntax: only "started"
        return {d: "service_started" for d in deps}
    return {d: (v or {}).get("condition", "service_started") for d, v in deps.items()}


def hc_test(name: str, svc: dict[str, Any]) -> list[str] | str:
    hc = svc.get("healthcheck") or {}
    assert hc.get("test"), f"{name} has no healthcheck"
    return hc["test"]  # type: ignore[no-any-return]


def published(svc: dict[str, Any]) -> list[tuple[str | None, int, int]]:
    """(host ip, host port, container port) of each published port."""
    out: list[tuple[str | None, int, int]] = []
    for p in svc.get("ports", []):
        if isinstance(p, dict):
            out.append((p.get("host_ip"), int(p.get("published", p["target"])), int(p["target"])))
            continue
        parts = str(p).split("/")[0].rsplit(":", 2)
        if len(parts) == 3:
            out.append((parts[0] or None, int(parts[1]), int(parts[2])))
        elif len(parts) == 2:
            out.append((None, int(parts[0]), int(parts[1])))
        else:
            out.append((None, int(parts[0]), int(parts[0])))
    return out


def duration_s(value: str | int | float) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"not a compose duration: {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


def redis_args(args: list[str]) -> dict[str, str]:
    out, i = {}, 1
    while i < len(args):
        assert args[i].startswith("--"), args
        out[args[i][2:]] = args[i + 1]
        i += 2
    return out


def worker_queues(cmd: CeleryCommand) -> set[str]:
    # No -Q: a worker consumes every queue of task_queues.
    return set(cmd.params.get("queues") or [q.name for q in celery_app.conf.task_queues])


def app_queues() -> set[str]:
    """Every queue the Celery app defines or routes a task to."""
    conf = celery_app.conf
    routed = {r["queue"] for r in conf.task_routes.values()}
    return {q.name for q in conf.task_queues} | routed | {conf.task_default_queue}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def need(binary: str) -> str:
    found = shutil.which(binary)
    if found is None:
        msg = f"{binary} is not installed here"
        if REQUIRE:
            pytest.fail(f"{msg} (AUTOPACK_REQUIRE_SERVICES=1)")
        pytest.skip(msg)
    return found


# ------------------------------------------------------------------------------------------ topology


def test_the_topology_is_all_there() -> None:
    roles = [role(s) for s in services().values()]
    for r in ("redis", "postgres", "migrate", "web", "flower"):
        assert roles.count(r) == 1, (r, roles)
    assert roles.count("worker") >= 1, roles
    assert not [r for r in roles if r.startswith("unknown")], roles


def test_workers_get_every_model_providers_key_from_the_operator() -> None:
    """A worker calls the models: each provider's key variable (config/models.yaml) must reach it
    from the operator's environment. The file passed none, so a compose cluster could not call a model."""
    from autopack.config import load_config

    names = {p.api_key_env for p in load_config(ROOT / "config").models.providers.values() if p.api_key_env}
    assert names >= {"ANTHROPIC_API_KEY", "OPENAI_API_KEY"}
    given = {n: f"key-of-{n.lower()}" for n in names}
    workers = {name: svc for name, svc in compose({**COMPOSE_ENV, **given})["services"].items() if role(svc) == "worker"}
    assert workers
    for name, svc in workers.items():
        env = svc.get("environment", {})
        assert {n: env.get(n) for n in names} == given, name
    unset = compose()["services"]
    for name in workers:  # not given: empty, which the provider factory reports by the variable's name
        assert {unset[name]["environment"].get(n) for n in names} == {""}, name


def test_every_long_running_service_has_a_healthcheck() -> None:
    for name, svc in services().items():
        if role(svc) == "migrate":
            continue
        hc = svc.get("healthcheck")
        assert hc, f"{name} has no healthcheck"
        assert not hc.get("disable"), name
        test = hc.get("test")
        assert test and test != ["NONE"], f"{name}: healthcheck without a test"
        assert isinstance(test, str) or (test[0] in ("CMD", "CMD-SHELL") and all(str(t).strip() for t in test[1:]) and len(test) > 1), (name, test)
        if "interval" in hc and "timeout" in hc:
            assert duration_s(hc["timeout"]) <= duration_s(hc["interval"]), f"{name}: healthcheck timeout above its interval"


def test_migrate_is_one_shot_and_gates_the_application() -> None:
    (name, migrate), = by_role("migrate").items()
    restart = str(migrate.get("restart", "no"))
    assert restart == "no" or restart.startswith("on-failure"), f"{name} restarts ({restart}): not one-shot"
    assert depends_on(migrate).get("postgres") == "service_healthy", name
    assert "healthcheck" not in migrate and not migrate.get("ports"), name
    for other, svc in services().items():
        r = role(svc)
        if r in ("web", "worker", "beat"):
            deps = depends_on(svc)
            assert deps.get(name) == "service_completed_successfully", (other, deps)
            assert deps.get("redis") == "service_healthy", (other, deps)
            assert deps.get("postgres") == "service_healthy", (other, deps)
        if r == "flower":
            assert depends_on(svc).get("redis") == "service_healthy", other
    # It migrates the database the application uses, with the same code.
    web = next(iter(by_role("web").values()))
    assert migrate.get("build") == web.get("build") and migrate.get("image") == web.get("image")
    for var in ("AUTOPACK_PROFILE", "AUTOPACK_POSTGRES_URL", "AUTOPACK_DATABASE_URL"):
        assert migrate["environment"].get(var) == web["environment"].get(var), var


def test_redis_never_evicts_and_appends_to_a_persistent_volume() -> None:
    redis = services()["redis"]
    args = redis_args(argv(redis["command"]))
    assert args.get("maxmemory-policy") == "noeviction", args
    assert args.get("appendonly") == "yes", args
    data_dir = args.get("dir", "/data")  # the redis image's working directory
    volumes = compose()["volumes"] or {}
    mounts = [str(v).split(":") for v in redis.get("volumes", [])]
    assert any(m[1] == data_dir and (m[0] in volumes or m[0].startswith(("/", "."))) for m in mounts), (mounts, volumes)


def test_postgres_keeps_its_data_in_a_volume() -> None:
    pg = services()["postgres"]
    tag = str(pg["image"]).partition(":")[2]
    major = int(re.match(r"\d+", tag).group()) if tag and tag[0].isdigit() else 99  # type: ignore[union-attr]
    # Images 18+ keep data under /var/lib/postgresql/<major>/docker; before, /var/lib/postgresql/data.
    expected = pg.get("environment", {}).get("PGDATA") or ("/var/lib/postgresql" if major >= 18 else "/var/lib/postgresql/data")
    volumes = compose()["volumes"] or {}
    mounts = [str(v).split(":") for v in pg.get("volumes", [])]
    assert any(m[1] == expected and m[0] in volumes for m in mounts), (mounts, expected)


def test_postgres_healthcheck_waits_for_the_tcp_listener() -> None:
    # The image's first-start initialisation runs a temporary server on the Unix socket only; a
    # check over the socket reports it ready, migrate connects over TCP and fails, and nothing starts.
    (cmd,) = healthcheck_commands(hc_test("postgres", services()["postgres"]))
    assert cmd[0] == "pg_isready", cmd
    host = next((a.split("=", 1)[1] if "=" in a else cmd[i + 1] for i, a in enumerate(cmd) if a in ("-h", "--host") or a.startswith("--host=")), None)
    assert host is not None and not host.startswith("/"), f"pg_isready checks the Unix socket: {cmd}"


def test_exactly_one_beat_and_it_is_not_scaled() -> None:
    beats = by_role("beat")
    assert len(beats) == 1, list(beats)
    (svc,) = beats.values()
    assert int((svc.get("deploy") or {}).get("replicas", 1)) == 1
    assert int(svc.get("scale", 1)) == 1
    for name, worker in by_role("worker").items():
        assert not parse_celery(argv(worker["command"])).params.get("beat"), f"{name} embeds a beat (-B)"
    assert sum(1 for c in procfile_celery().values() if c.sub == "beat") == 1
    assert not [n for n, c in procfile_celery().items() if c.sub == "worker" and c.params.get("beat")]


# ------------------------------------------------------------------------------------------ Flower, ports


def test_flower_requires_basic_auth_from_the_environment() -> None:
    raw = raw_compose()["services"]
    (name,) = by_role("flower")
    svc = raw[name]
    sources = []
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    if "FLOWER_BASIC_AUTH" in env:
        sources.append(str(env["FLOWER_BASIC_AUTH"]))
    sources += [a.split("=", 1)[1] for a in argv(svc["command"]) if a.startswith("--basic-auth=")]
    assert sources, f"{name} runs without basic auth"
    for src in sources:
        # The password comes from a required variable with no default: never a literal in this file.
        # (A user name, literal or from a variable, may come first.)
        assert re.fullmatch(r"(?:(?:\$\{[^}]*\}|[^$:])*:)?\$\{[A-Za-z_]\w*:?\?[^}]*\}", src), f"{name}: basic auth {src!r} is not a required variable"
    with pytest.raises(MissingVariable):
        compose({})  # without the credentials compose refuses to start
    # Flower reads the variable itself (FLOWER_<option>), so the credentials reach it.
    import flower.options  # noqa: F401 - defines Flower's options
    from tornado.options import options as tornado_options

    assert "basic_auth" in tornado_options
    resolved = services()[name]
    creds = resolved["environment"].get("FLOWER_BASIC_AUTH") or flower_options(parse_celery(argv(resolved["command"])).params["tornado_argv"]).get("basic_auth")
    assert creds == COMPOSE_ENV["FLOWER_BASIC_AUTH"]


def test_published_ports_bind_localhost_and_reach_the_listener() -> None:
    for name, svc in services().items():
        r = role(svc)
        ports = published(svc)
        if r in ("redis", "postgres", "worker", "beat", "migrate"):
            assert not ports, f"{name} publishes {ports}"
            continue
        for host_ip, _, _ in ports:
            assert host_ip == "127.0.0.1", f"{name} publishes on {host_ip or 'every interface'}"
        args = argv(svc["command"])
        if r == "web":
            ns = _autopack_args(args)
            host, port = ns.host, ns.port
        elif r == "flower":
            opts = flower_options(parse_celery(args).params["tornado_argv"])
            host, port = opts.get("address", ""), int(opts.get("port", 5555))
        else:
            continue
        assert ports, f"{name} publishes no port"
        # Docker forwards to the container's interface: a listener on its loopback is unreachable.
        assert host in ("0.0.0.0", ""), f"{name} listens on {host} inside its container"
        assert {target for _, _, target in ports} == {port}, (name, ports, port)
        # Its healthcheck asks that listener.
        hc = " ".join(" ".join(c) for c in healthcheck_commands(hc_test(name, svc)))
        assert f"127.0.0.1:{port}/" in hc, (name, hc)


def test_procfile_flower_requires_basic_auth_and_binds_localhost(tmp_path: Path) -> None:
    line = procfile()["flower"]
    opts = flower_options(procfile_celery()["flower"].params["tornado_argv"])
    assert opts.get("address") == "127.0.0.1", opts
    assert "basic_auth" not in opts, "the password would be on the command line (ps)"
    # Without FLOWER_BASIC_AUTH the line stops before Flower starts (no celery on this PATH either way).
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    res = subprocess.run(["/bin/sh", "-c", line], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert res.returncode != 0 and "FLOWER_BASIC_AUTH" in res.stderr, (res.returncode, res.stderr)


# ------------------------------------------------------------------------------------------ queues, events


def test_compose_workers_consume_every_queue_of_the_app() -> None:
    workers = {n: parse_celery(argv(s["command"])) for n, s in by_role("worker").items()}
    consumed = set().union(*(worker_queues(c) for c in workers.values()))
    assert app_queues() <= consumed, f"no compose worker consumes {app_queues() - consumed}"
    assert consumed <= app_queues(), f"compose workers consume queues the app does not know: {consumed - app_queues()}"


def test_procfile_workers_consume_every_queue_of_the_app() -> None:
    workers = {n: c for n, c in procfile_celery().items() if c.sub == "worker"}
    assert workers
    consumed = set().union(*(worker_queues(c) for c in workers.values()))
    assert app_queues() <= consumed, f"no Procfile worker consumes {app_queues() - consumed}"
    assert consumed <= app_queues(), consumed - app_queues()


def test_workers_send_events_for_flower() -> None:
    commands = [parse_celery(argv(s["command"])) for s in by_role("worker").values()]
    commands += [c for c in procfile_celery().values() if c.sub == "worker"]
    for cmd in commands:
        assert cmd.params.get("task_events") is True, cmd.params
    assert celery_app.conf.worker_send_task_events and celery_app.conf.task_send_sent_event


# ------------------------------------------------------------------------------------------ entry points


def _autopack_args(args: list[str]) -> Any:
    from autopack.cli import build_parser

    assert args[0] == "autopack", args
    try:
        return build_parser().parse_args(args[1:])
    except SystemExit:
        pytest.fail(f"`{' '.join(args)}` is not a command of the autopack CLI")


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _image_provides(image: str | None, executable: str) -> bool:
    if image is not None:  # the official images these services use
        provided = {"redis": {"redis-cli", "redis-server"}, "postgres": {"pg_isready", "postgres"}}
        return executable in provided.get(image.split(":")[0], set())
    project = _pyproject()["project"]
    deps = {re.split(r"[<>=\[ ;!~]", d, maxsplit=1)[0].lower() for d in project["dependencies"]}
    if executable in project.get("scripts", {}):
        return True
    if executable in ("celery",):
        return executable in deps
    # python:<version>-slim is Debian: the interpreter and the base utilities.
    return executable in ("python", "sh", "find", "grep", "mkdir", ":")


def _check_command(args: list[str], where: str) -> None:
    if args[0] == "autopack":
        _autopack_args(args)
    elif args[0] == "celery":
        cmd = parse_celery(args)
        assert cmd.app is celery_app, f"{where}: -A names {cmd.app!r}, not the configured app"
        for opt in ("broker", "result_backend"):
            assert not cmd.global_params.get(opt), f"{where}: --{opt} bypasses the app's settings"
        if cmd.sub == "flower":
            import flower.options  # noqa: F401
            from tornado.options import options as tornado_options

            unknown = [o for o in flower_options(cmd.params["tornado_argv"]) if o not in tornado_options]
            assert not unknown, f"{where}: Flower has no option {unknown}"
    elif args[:2] == ["python", "-c"]:
        compile(args[2], where, "exec")


def test_commands_and_healthchecks_name_what_the_image_has() -> None:
    checked = 0
    for name, svc in services().items():
        image = None if "build" in svc else str(svc.get("image"))
        runs = [argv(svc.get("command"))] if svc.get("command") else []
        runs += healthcheck_commands(svc["healthcheck"]["test"]) if "healthcheck" in svc else []
        for args in runs:
            assert _image_provides(image, args[0]), f"{name}: {args[0]!r} is not in its image ({image or 'Dockerfile'})"
            _check_command(args, f"{name}: {' '.join(args)}")
            checked += 1
    for name, line in procfile().items():
        for args in shell_commands(interpolate(line, PROCFILE_ENV)):
            assert _image_provides(None, args[0]), f"Procfile {name}: {args[0]!r}"
            _check_command(args, f"Procfile {name}")
            checked += 1
    assert checked >= 15


def test_worker_healthchecks_ping_their_own_node() -> None:
    for name, svc in by_role("worker").items():
        node = parse_celery(argv(svc["command"])).params["hostname"]
        # The hostname as the worker's -n gives it, before %h expansion:
        raw_n = argv(svc["command"])[argv(svc["command"]).index("-n") + 1]
        assert raw_n.endswith("@%h"), f"{name}: scaled replicas would share the node name {raw_n}"
        (ping,) = healthcheck_commands(hc_test(name, svc))
        cmd = parse_celery(ping)
        assert (cmd.sub, cmd.params.get("command")) == ("inspect", "ping"), ping
        dest = cmd.params.get("destination") or []
        assert dest == [raw_n.replace("%h", "$HOSTNAME")], f"{name}: pings {dest or 'every worker'}, not {node}"


def test_beat_healthcheck_watches_the_schedule_file_beat_writes() -> None:
    ((name, svc),) = by_role("beat").items()
    schedule = Path(parse_celery(argv(svc["command"])).params["schedule"])
    find, grep = healthcheck_commands(hc_test(name, svc))
    assert find[:2] == ["find", str(schedule.parent)], find
    assert find[find.index("-name") + 1] == f"{schedule.name}*", find
    age = int(find[find.index("-mmin") + 1])
    assert age < 0 and -age * 60 > 3 * 60, f"beat rewrites the file every 3 minutes; -mmin {age}"
    assert grep[:2] == ["grep", "-q"], grep
    # The schedule lives on the state volume, not in the image's working directory.
    state = svc["environment"]["AUTOPACK_STATE_DIR"]
    assert schedule.parent == Path(state) and any(str(v).endswith(":" + state) for v in svc["volumes"])


# ------------------------------------------------------------------------------------------ scaling, stopping


def test_a_pool_can_be_scaled_as_documented() -> None:
    text = COMPOSE_FILE.read_text()
    comments = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
    scaled = re.findall(r"--scale\s+([\w-]+)=\d+", comments)
    workers = by_role("worker")
    assert scaled and set(scaled) <= set(workers), (scaled, list(workers))
    for name, svc in raw_compose()["services"].items():
        if name not in workers:
            continue
        # Scaled replicas must not collide.
        assert "container_name" not in svc and "hostname" not in svc and not svc.get("ports"), f"{name}: replicas would collide"
        args = argv(svc["command"])
        conc = args[args.index("-c") + 1] if "-c" in args else args[args.index("--concurrency") + 1]
        m = re.fullmatch(r"\$\{(\w+):-(\d+)\}", conc)
        assert conc.isdigit() or m, f"{name}: -c {conc}"
        if m:
            assert m[1] in comments, f"{name}: {m[1]} is not documented"


def test_procfile_workers_take_sigterm_as_the_soft_shutdown() -> None:
    """honcho stops its processes with SIGTERM: as SIGQUIT that is Celery's soft shutdown, bounded by
    the setting, instead of a warm shutdown that waits for every running step."""
    workers = 0
    for name, line in procfile().items():
        for words, env in zip(shell_commands(interpolate(line, PROCFILE_ENV)), assignments(interpolate(line, PROCFILE_ENV))):
            if words[:1] == ["celery"] and parse_celery(words).sub == "worker":
                assert env.get("REMAP_SIGTERM") == "SIGQUIT", f"Procfile {name}: SIGTERM would be a warm shutdown"
                workers += 1
    assert workers == 3


def test_workers_stop_within_the_grace_period() -> None:
    for name, svc in by_role("worker").items():
        env = svc["environment"]
        # SIGTERM alone is a warm shutdown that waits for every running step: Docker SIGKILLs it
        # after stop_grace_period. As SIGQUIT it is the soft shutdown bounded by the setting.
        assert env.get("REMAP_SIGTERM") == "SIGQUIT", f"{name}: `docker stop` would be a warm shutdown, SIGKILLed after the grace period"
        soft = float(env.get("AUTOPACK_SOFT_SHUTDOWN_TIMEOUT_S", Settings.model_fields["soft_shutdown_timeout_s"].default))
        assert soft > 0
        grace = duration_s(svc.get("stop_grace_period", "10s"))
        assert grace >= soft + 15, f"{name}: stop_grace_period {grace}s, soft shutdown {soft}s"


def test_the_sandbox_pool_may_create_namespaces() -> None:
    queues = {ROUTES[step][1] for step in SANDBOX_STEPS}
    pools = {n: s for n, s in by_role("worker").items() if worker_queues(parse_celery(argv(s["command"]))) & queues}
    assert pools
    for name, svc in pools.items():
        opts = {o.replace(":", "=", 1) for o in svc.get("security_opt", [])}
        assert svc.get("privileged") or {"seccomp=unconfined", "apparmor=unconfined"} <= opts, (
            f"{name} runs bubblewrap, which Docker's default seccomp/AppArmor profiles stop: {opts}"
        )


# ------------------------------------------------------------------------------------------ visibility timeout


def test_visibility_timeout_is_above_the_longest_step(monkeypatch: pytest.MonkeyPatch) -> None:
    broker_users = {n: s for n, s in services().items() if role(s) in ("web", "worker", "beat", "flower")}
    envs = {n: {k: v for k, v in s["environment"].items() if k.startswith("AUTOPACK_")} for n, s in broker_users.items()}
    # Every process that talks to Redis computes the same transport options from the same settings.
    first = next(iter(envs.values()))
    assert all(e == first for e in envs.values()), envs
    for name, svc in broker_users.items():
        assert not [k for k in svc["environment"] if k.startswith("CELERY_")], f"{name}: CELERY_* variables bypass the app's settings"
    for var in [k for k in os.environ if k.startswith("AUTOPACK_")]:
        monkeypatch.delenv(var)
    for k, v in first.items():
        monkeypatch.setenv(k, v)
    settings = Settings()
    conf = celery_config(settings)
    assert settings.profile == "prod" and conf["broker_url"].startswith("redis://"), conf["broker_url"]
    longest = max([queue_time_limit(settings, q) for q in QUEUES] + [a["time_limit"] for a in conf["task_annotations"].values()])
    for where, vt in (
        ("broker_transport_options", conf["broker_transport_options"]["visibility_timeout"]),
        ("result_backend_transport_options", conf["result_backend_transport_options"]["visibility_timeout"]),
        ("visibility_timeout", conf["visibility_timeout"]),
    ):
        assert vt > longest, f"{where}: visibility timeout {vt}s is not above the longest step ({longest}s)"


# ------------------------------------------------------------------------------------------ Dockerfile


def test_dockerfile_builds_what_compose_runs() -> None:
    text = DOCKERFILE.read_text()
    base = re.search(r"^FROM\s+(\S+)", text, re.M)
    assert base and base[1].startswith("python:"), base
    wanted = _pyproject()["project"]["requires-python"].removeprefix(">=")
    assert tuple(map(int, base[1].split(":")[1].split("-")[0].split("."))) >= tuple(map(int, wanted.split("."))), base[1]
    install = re.search(r"apt-get install[^\n]*", text)
    assert install and {"git", "bubblewrap"} <= set(install[0].split()), "the workspace needs git, the sandbox bubblewrap"
    # The packages, and what they find beside them at run time (config, prompts, migrations: ROOT/...).
    for part in ("autopack", "tasks", "web", "config", "prompts", "migrations"):
        assert re.search(rf"^COPY\s+(\.|{part}/?)\s", text, re.M), f"the image lacks {part}/"
    # settings.ROOT is the package's parent: only an editable install keeps config/ and prompts/ beside it.
    assert re.search(r"pip install[^\n]*\s-e\s+\.", text) or "AUTOPACK_CONFIG_DIR" in text, "config/ and prompts/ not found at run time"
    state = re.search(r"AUTOPACK_STATE_DIR=(\S+)", text)
    assert state and any(str(v).endswith(":" + state[1]) for v in services()["web"]["volumes"]), "state dir outside the volume"


# ------------------------------------------------------------------------------------------ run here


def _local_env(svc: dict[str, Any], state: Path) -> dict[str, str]:
    """The service's compose environment, on the local profile in ``state`` (no Redis, no PostgreSQL)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTOPACK_", "FLOWER_", "CELERY_", "REMAP_"))}
    env.update({k: str(v) for k, v in (svc.get("environment") or {}).items()})
    env.update(AUTOPACK_PROFILE="local", AUTOPACK_STATE_DIR=str(state), HOSTNAME=socket.gethostname(),
               PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}")
    return env


@dataclass
class Local:
    state: Path
    logs: Path
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    envs: dict[str, dict[str, str]] = field(default_factory=dict)

    def localize(self, name: str, text: str) -> str:
        """The container's paths and ports, mapped to this test's."""
        text = text.replace(services()[name]["environment"]["AUTOPACK_STATE_DIR"], str(self.state))
        text = text.replace("0.0.0.0", "127.0.0.1")
        for _, _, target in published(services()[name]):
            text = re.sub(rf"(?<!\d){target}(?!\d)", str(self.ports[name]), text)
        return text

    def healthcheck(self, name: str, test: list[str] | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        test = [self.localize(name, t) for t in (test or hc_test(name, services()[name]))]
        args = test[1:] if test[0] == "CMD" else ["/bin/sh", "-c", test[1]]
        return subprocess.run(args, env=env or self.envs[name], cwd=self.state, capture_output=True, text=True, timeout=60)

    def wait_healthy(self, name: str, timeout: float = 60, test: list[str] | None = None) -> None:
        deadline = time.monotonic() + timeout
        while True:
            res = self.healthcheck(name, test)
            if res.returncode == 0:
                return
            proc = self.procs[name]
            if proc.poll() is not None or time.monotonic() > deadline:
                log = (self.logs / f"{name}.log").read_text()[-3000:]
                pytest.fail(f"{name} never became healthy (exit {proc.returncode}): {res.stdout}{res.stderr}\n{log}")
            time.sleep(0.3)


def _stop(*procs: subprocess.Popen[bytes], grace: float = 10) -> None:
    """SIGTERM each process group, then SIGKILL what is left after ``grace`` seconds."""
    for proc in procs:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Local]:
    """migrate (twice), then web, worker-ci, beat and Flower from their compose commands, on the local profile."""
    root = tmp_path_factory.mktemp("compose-local")
    here = Local(state=root / "state", logs=root / "logs")
    here.state.mkdir()
    here.logs.mkdir()
    (migrate_name,) = by_role("migrate")
    for _ in range(2):  # it runs on every `docker compose up`: it must succeed on a migrated database
        res = subprocess.run(argv(services()[migrate_name]["command"]), env=_local_env(services()[migrate_name], here.state),
                             cwd=here.state, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
    (web,) = by_role("web")
    (flower,) = by_role("flower")
    (beat,) = by_role("beat")
    ci = next(n for n, s in by_role("worker").items() if "ci" in worker_queues(parse_celery(argv(s["command"]))))
    try:
        for name in (web, ci, beat, flower):
            svc = services()[name]
            if published(svc):
                here.ports[name] = free_port()
            here.envs[name] = _local_env(svc, here.state)
            args = [here.localize(name, a) for a in argv(svc["command"])]
            here.procs[name] = subprocess.Popen(args, env=here.envs[name], cwd=here.state, start_new_session=True,
                                                stdout=open(here.logs / f"{name}.log", "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
        yield here
    finally:
        _stop(*here.procs.values())


@pytest.mark.slow
def test_web_healthcheck_passes_on_the_running_api(local: Local) -> None:
    (web,) = by_role("web")
    local.wait_healthy(web)
    # and fails where nothing listens
    stale = Local(state=local.state, logs=local.logs, ports={web: free_port()}, envs=local.envs)
    assert stale.healthcheck(web).returncode != 0


@pytest.mark.slow
def test_worker_healthcheck_answers_for_this_worker_only(local: Local) -> None:
    name = next(n for n in local.procs if role(services()[n]) == "worker")
    test = hc_test(name, services()[name])
    quick = [re.sub(r"--timeout[ =]\S+", "--timeout 1", t) for t in test]  # waiting; the verdict uses the real one
    local.wait_healthy(name, test=quick)
    with ThreadPoolExecutor(2) as pool:
        verdict = pool.submit(local.healthcheck, name)
        # Another container's worker does not make this one healthy.
        other = pool.submit(local.healthcheck, name, quick, {**local.envs[name], "HOSTNAME": "another-container"})
        res = verdict.result()
        assert res.returncode == 0, res.stdout + res.stderr
        assert other.result().returncode != 0
    # `docker stop`: SIGTERM starts Celery's cold shutdown, whose soft phase the setting bounds, not a
    # warm one that waits for every running step. (How long the exit takes here says nothing about
    # Redis: the local transport's polling loop finishes its cycle first; teardown ends it.)
    local.procs[name].send_signal(signal.SIGTERM)
    log_file = local.logs / f"{name}.log"
    deadline = time.monotonic() + 20
    while "shutdown (MainProcess)" not in (log := log_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "worker: Cold shutdown (MainProcess)" in log, log[-2000:]
    os.killpg(local.procs[name].pid, signal.SIGKILL)


@pytest.mark.slow
def test_beat_healthcheck_sees_the_schedule_beat_writes(local: Local) -> None:
    (beat,) = by_role("beat")
    local.wait_healthy(beat)
    empty = local.state / "empty"
    empty.mkdir(exist_ok=True)
    elsewhere = Local(state=empty, logs=local.logs, envs=local.envs)
    assert elsewhere.healthcheck(beat).returncode != 0


@pytest.mark.slow
def test_flower_healthcheck_passes_and_the_api_wants_credentials(local: Local) -> None:
    (flower,) = by_role("flower")
    local.wait_healthy(flower)
    url = f"http://127.0.0.1:{local.ports[flower]}/api/workers"
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(url, timeout=10)  # noqa: S310 - loopback
    assert denied.value.code == 401
    auth = base64.b64encode(COMPOSE_ENV["FLOWER_BASIC_AUTH"].encode()).decode()
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": f"Basic {auth}"}), timeout=10) as resp:  # noqa: S310
        assert resp.status == 200


def test_redis_server_takes_the_compose_command_and_answers_its_healthcheck(tmp_path: Path) -> None:
    server = need("redis-server")
    need("redis-cli")
    redis = services()["redis"]
    args = argv(redis["command"])
    assert args[0] == "redis-server"
    port = free_port()
    proc = subprocess.Popen([server, *args[1:], "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path), "--save", ""],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    (ping,) = healthcheck_commands(hc_test("redis", redis))
    try:
        deadline = time.monotonic() + 20
        while (res := subprocess.run([ping[0], "-p", str(port), *ping[1:]], capture_output=True, text=True, timeout=10)).returncode != 0:
            assert proc.poll() is None and time.monotonic() < deadline, res.stdout + res.stderr
            time.sleep(0.1)
        import redis as redis_client

        client = redis_client.Redis(port=port)
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert client.config_get("appendonly") == {"appendonly": "yes"}
    finally:
        _stop(proc)
    assert subprocess.run([ping[0], "-p", str(port), *ping[1:]], capture_output=True, timeout=10).returncode != 0


@pytest.mark.slow
@pytest.mark.postgres
def test_migrate_is_idempotent_on_postgres_and_pg_isready_sees_the_server(pg_url: str, tmp_path: Path) -> None:
    from sqlalchemy.engine import make_url

    (name,) = by_role("migrate")
    env = _local_env(services()[name], tmp_path)
    env.update(AUTOPACK_PROFILE="prod", AUTOPACK_POSTGRES_URL=pg_url)
    for _ in range(2):
        res = subprocess.run(argv(services()[name]["command"]), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "prod profile" in res.stdout
    url = make_url(pg_url)
    if url.host not in ("127.0.0.1", "localhost"):
        return  # the healthcheck asks 127.0.0.1, as inside the postgres container
    need("pg_isready")
    (check,) = healthcheck_commands(hc_test("postgres", services()["postgres"]))
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    assert subprocess.run(check, env={**base, "PGPORT": str(url.port or 5432)}, capture_output=True, timeout=30).returncode == 0
    assert subprocess.run(check, env={**base, "PGPORT": str(free_port())}, capture_output=True, timeout=30).returncode != 0
