"""The deployment files agree with the code.

deploy/compose.yaml, deploy/k8s/*.yaml and deploy/Dockerfile cannot be run here (no Docker, no
cluster), so they are parsed and checked against what the code defines: the services
(services.registry.SPECS), their command line (shared.cli), the settings (shared.settings), the
topics and partition counts (shared.topics) and the HTTP routes (the embedded app, built, never
started). Renaming a setting, adding a topic or a service without updating the deploy files
fails here."""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import runpy
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi import FastAPI

import shared.cli as cli
from services.front_door import PROXIED
from services.registry import SPECS
from shared import clock
from shared.proxy import route_table
from shared.settings import Settings
from shared.topics import all_topics, partitions

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
K8S_DIR = DEPLOY / "k8s"
DOCKERFILE = DEPLOY / "Dockerfile"
INIT_SQL = DEPLOY / "postgres" / "init-databases.sql"
SECRET_TEMPLATE = K8S_DIR / "secret.example.yaml"
KUSTOMIZATION = K8S_DIR / "kustomization.yaml"

# The values `--roles` understands (shared/cli.py: "api, consumer, relay, migrate").
CLI_ROLES = {"api", "consumer", "relay", "migrate"}
CLI_SUBCOMMANDS = {"run", "migrate"}
# Compose services that are infrastructure, not Fugou services.
COMPOSE_INFRA = {"kafka", "postgres", "kafka-topics"}
# The image deploy/Dockerfile builds (repository name, without registry or tag).
FUGOU_IMAGE = "fugou"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}
PLACEHOLDER = "CHANGE-ME"


# ------------------------------------------------------------------ reading the files


def deploy_texts() -> dict[str, str]:
    """Every file this test is about, by path relative to the repository."""
    paths = [COMPOSE_FILE, DOCKERFILE, INIT_SQL, *sorted(K8S_DIR.glob("*.yaml")), *sorted(K8S_DIR.glob("*.md"))]
    return {p.relative_to(ROOT).as_posix(): p.read_text(encoding="utf-8") for p in paths}


@functools.cache
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


@functools.cache
def k8s_objects() -> list[tuple[str, dict[str, Any]]]:
    """(file name, object) for every Kubernetes object in deploy/k8s/*.yaml (multi-document),
    the kustomization aside."""
    out = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc and doc.get("kind") != "Kustomization":
                assert {"apiVersion", "kind", "metadata"} <= set(doc), f"{path.name}: not a Kubernetes object"
                out.append((path.name, doc))
    return out


def k8s_of_kind(kind: str) -> list[dict[str, Any]]:
    return [obj for _, obj in k8s_objects() if obj.get("kind") == kind]


_INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|\$(?P<bare>[A-Za-z_]\w*)")


def interpolate(value: Any) -> str:
    """Compose's variable interpolation, with the host environment unset: `${X:-d}` gives d,
    a required or plain `${X}` a stand-in value, `$$` a literal `$`."""
    text = "" if value is None else str(value)
    parts = text.split("$$")

    def sub(m: re.Match[str]) -> str:
        name = m.group("name") or m.group("bare")
        if m.group("op") in (":-", "-"):
            return m.group("arg")
        return f"value-of-{name}-from-the-host"

    return "$".join(_INTERPOLATION.sub(sub, part) for part in parts)


def _argv(value: Any) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def _image_is_fugou(image: str | None) -> bool:
    if not image:
        return False
    name = image.rsplit("/", 1)[-1].split("@", 1)[0].split(":", 1)[0]
    return name == FUGOU_IMAGE


@dataclass
class Invocation:
    """`python -m services.<service> <subcommand> <args…>`."""

    service: str
    subcommand: str | None
    args: list[str]

    @property
    def argv(self) -> list[str]:
        return ([self.subcommand] if self.subcommand else []) + self.args

    def option(self, name: str) -> str | None:
        for i, arg in enumerate(self.args):
            if arg == name and i + 1 < len(self.args):
                return self.args[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
        return None


def invocation(argv: list[str]) -> Invocation | None:
    for i in range(len(argv) - 2):
        if (
            re.fullmatch(r"(.*/)?python(3(\.\d+)?)?", argv[i])
            and argv[i + 1] == "-m"
            and argv[i + 2].startswith("services.")
        ):
            rest = argv[i + 3 :]
            sub = rest[0] if rest and not rest[0].startswith("-") else None
            return Invocation(argv[i + 2].removeprefix("services."), sub, rest[1:] if sub else rest)
    return None


@dataclass
class Process:
    """One Fugou container: where it is declared, its command and its environment."""

    where: str
    name: str
    argv: list[str]
    env: dict[str, str]
    raw: dict[str, Any] = field(repr=False)

    @property
    def call(self) -> Invocation | None:
        return invocation(self.argv)


def _compose_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: interpolate(v) for k, v in env.items()}


def compose_fugou_processes() -> list[Process]:
    out = []
    for name, svc in compose()["services"].items():
        argv = _argv(svc.get("entrypoint")) + _argv(svc.get("command"))
        if _image_is_fugou(svc.get("image")) or "build" in svc or invocation(argv):
            argv = [interpolate(a) for a in argv]
            out.append(Process(f"compose service {name!r}", name, argv, _compose_env(svc), svc))
    return out


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    spec = obj.get("spec") or {}
    if obj.get("kind") == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    return (spec.get("template") or {}).get("spec")


def workloads() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for file, obj in k8s_objects():
        if obj.get("kind") in WORKLOAD_KINDS:
            pod = _pod_spec(obj)
            assert pod is not None, f"{file}: {obj['kind']} {obj['metadata']['name']} has no pod template"
            yield f"{file}: {obj['kind']} {obj['metadata']['name']}", obj, pod


def containers(pod: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for c in pod.get("initContainers") or []:
        yield "initContainer", c
    for c in pod.get("containers") or []:
        yield "container", c


def _configmaps() -> dict[str, dict[str, str]]:
    return {
        o["metadata"]["name"]: {k: str(v) for k, v in (o.get("data") or {}).items()} for o in k8s_of_kind("ConfigMap")
    }


def _secrets() -> dict[str, dict[str, str]]:
    out = {}
    for o in k8s_of_kind("Secret"):
        data = {k: base64.b64decode(v).decode() for k, v in (o.get("data") or {}).items()}
        data.update({k: str(v) for k, v in (o.get("stringData") or {}).items()})
        out[o["metadata"]["name"]] = data
    return out


def k8s_env(container: dict[str, Any], where: str) -> dict[str, str]:
    """The container's environment as the kubelet would build it from the manifests' ConfigMaps
    and Secrets; a reference that does not resolve fails (unless marked optional)."""
    cms, secrets = _configmaps(), _secrets()
    env: dict[str, str] = {}
    for src in container.get("envFrom") or []:
        if "configMapRef" in src:
            ref, pool = src["configMapRef"], cms
        else:
            ref, pool = src["secretRef"], secrets
        if ref["name"] not in pool:
            assert ref.get("optional"), f"{where}: envFrom names {ref['name']!r}, not in deploy/k8s"
            continue
        env.update({src.get("prefix", "") + k: v for k, v in pool[ref["name"]].items()})
    for item in container.get("env") or []:
        if "value" in item or "valueFrom" not in item:
            env[item["name"]] = str(item.get("value", ""))
            continue
        vf = item["valueFrom"]
        if "configMapKeyRef" in vf or "secretKeyRef" in vf:
            ref = vf.get("configMapKeyRef") or vf["secretKeyRef"]
            pool = cms if "configMapKeyRef" in vf else secrets
            value = pool.get(ref["name"], {}).get(ref["key"])
            if value is None:
                assert ref.get("optional"), (
                    f"{where}: {item['name']} refers to {ref['name']}/{ref['key']}, which deploy/k8s does not define"
                )
                continue
            env[item["name"]] = value
    return env


def k8s_fugou_processes() -> list[Process]:
    out = []
    for where, _, pod in workloads():
        for role, c in containers(pod):
            argv = _argv(c.get("command")) + _argv(c.get("args"))
            if _image_is_fugou(c.get("image")) or invocation(argv):
                name = f"{where} {role} {c['name']!r}"
                out.append(Process(name, c["name"], argv, k8s_env(c, name), c))
    return out


def all_fugou_processes() -> list[Process]:
    return compose_fugou_processes() + k8s_fugou_processes()


def routes_of(app: Any) -> set[str]:
    paths: set[str] = set()

    def walk(routes: Any) -> None:
        for route in routes:
            if getattr(route, "path", None):
                paths.add(route.path)
            inner = getattr(route, "original_router", None)
            if inner is not None:
                walk(inner.routes)

    walk(app.routes)
    return paths


@pytest.fixture(scope="module")
def app_routes(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    from services.embedded import build_embedded_app

    app = build_embedded_app(Settings(data_dir=tmp_path_factory.mktemp("deploy-app")), announce=False)
    return routes_of(app)


# ------------------------------------------------------------------ services and commands


def test_compose_runs_and_migrates_every_registered_service_and_nothing_else_claims_to_be_one() -> None:
    runs: dict[str, str] = {}
    migrates: dict[str, str] = {}
    for p in compose_fugou_processes():
        call = p.call
        assert call is not None, f"{p.where} uses the Fugou image but does not run `python -m services.<name>`"
        assert call.service in SPECS, f"{p.where} runs services.{call.service}, which is not in services.registry"
        name = p.name
        if call.subcommand == "run":
            assert name == call.service, f"{p.where} runs services.{call.service}: name it {call.service!r}"
            runs[call.service] = name
        elif call.subcommand == "migrate":
            migrates[call.service] = name
    assert set(runs) == set(SPECS), f"compose runs {sorted(runs)}, the registry has {sorted(SPECS)}"
    assert set(migrates) == set(SPECS), f"compose migrates {sorted(migrates)}, the registry has {sorted(SPECS)}"
    others = set(compose()["services"]) - set(runs.values()) - set(migrates.values()) - COMPOSE_INFRA
    assert not others, f"compose services that are neither a registered service nor infrastructure: {sorted(others)}"


def test_kubernetes_deploys_and_migrates_every_registered_service_and_nothing_else_claims_to_be_one() -> None:
    deployed: dict[str, str] = {}
    migrated: set[str] = set()
    for where, obj, pod in workloads():
        calls = []
        for role, c in containers(pod):
            argv = _argv(c.get("command")) + _argv(c.get("args"))
            call = invocation(argv)
            if _image_is_fugou(c.get("image")):
                assert call is not None, (
                    f"{where}: {c['name']!r} uses the Fugou image but does not run python -m services.<name>"
                )
            if call is None:
                continue
            assert call.service in SPECS, f"{where} runs services.{call.service}, which is not in services.registry"
            calls.append((role, call))
        mains = [call for role, call in calls if role == "container" and call.subcommand == "run"]
        if not calls:
            continue
        assert obj["kind"] == "Deployment" and len(mains) == 1, (
            f"{where}: a Fugou service runs as a Deployment with one `run` container"
        )
        service = mains[0].service
        assert obj["metadata"]["name"] == f"fugou-{service}", (
            f"{where} runs services.{service}: name it fugou-{service}"
        )
        assert service not in deployed, f"services.{service} is deployed twice: {deployed[service]} and {where}"
        deployed[service] = where
        inits = [call for role, call in calls if role == "initContainer"]
        assert [(c.service, c.subcommand) for c in inits] == [(service, "migrate")], (
            f"{where}: wants one init container running `python -m services.{service} migrate`"
        )
        migrated.add(service)
    assert set(deployed) == set(SPECS), f"deploy/k8s deploys {sorted(deployed)}, the registry has {sorted(SPECS)}"
    assert migrated == set(SPECS)
    claimed = {o["metadata"].get("labels", {}).get("app.kubernetes.io/component") for _, o in k8s_objects()}
    claimed |= {o["metadata"]["name"].removeprefix("fugou-") for o in k8s_of_kind("Service")}
    unknown = claimed - set(SPECS) - {None, "kafka-topics"}
    assert not unknown, f"deploy/k8s objects claim to be Fugou services the registry does not know: {sorted(unknown)}"


def test_every_kubernetes_service_routes_to_the_deployment_of_the_same_name() -> None:
    deployments = {d["metadata"]["name"]: d for d in k8s_of_kind("Deployment")}
    services = {s["metadata"]["name"]: s for s in k8s_of_kind("Service")}
    assert set(services) == {f"fugou-{name}" for name in SPECS}, f"Services: {sorted(services)}"
    for name, svc in services.items():
        dep = deployments[name]
        pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        selector = svc["spec"]["selector"]
        assert selector.items() <= pod_labels.items(), f"Service {name} selects {selector}, pods are {pod_labels}"
        assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        ports = {
            p.get("name"): p["containerPort"]
            for c in dep["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])
        }
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert target in ports or target in ports.values(), f"Service {name} targets {target}, pods expose {ports}"


def _run_cli(monkeypatch: pytest.MonkeyPatch, call: Invocation, env: dict[str, str]) -> dict[str, Any]:
    """Run `python -m services.<name> …` as the container would (its __main__, its argv, its
    environment), with the server, the app and the migration replaced by recorders."""
    seen: dict[str, Any] = {}

    def build_service_app(spec: Any, settings: Settings, roles: set[str], on_started: Any = None) -> FastAPI:
        seen.update(spec=spec.name, roles=roles)
        return FastAPI()  # built, never started: what the command adds to it is seen in serve

    def serve(app: Any, host: str, port: int, log_level: str = "warning") -> None:
        seen.update(host=host, port=port, app=app)

    async def migrate(spec: Any, settings: Settings) -> None:
        seen.update(spec=spec.name, migrated=True)

    monkeypatch.setattr(cli, "build_service_app", build_service_app)
    monkeypatch.setattr(cli, "serve", serve)
    monkeypatch.setattr(cli, "_migrate", migrate)
    monkeypatch.setattr(cli, "configure_logging", lambda *a, **k: None)
    monkeypatch.setattr(cli, "Settings", functools.partial(Settings, _env_file=None))
    for name in [n for n in os.environ if n.startswith("FUGOU_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(sys, "argv", [f"services.{call.service}", *call.argv])
    try:
        # The entry point installs the clock of its settings (the environment above has no
        # FUGOU_CLOCK_OFFSET): the suite's clock comes back after it.
        with clock.installed(clock.current()):
            runpy.run_module(f"services.{call.service}", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        pytest.fail(f"`python -m services.{call.service} {shlex.join(call.argv)}` exits with {exc.code}")
    except ImportError as exc:
        pytest.fail(f"`python -m services.{call.service}` cannot run: {exc}")
    return seen


def test_every_python_m_services_command_names_a_service_and_a_subcommand_and_roles_the_cli_accepts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    processes = all_fugou_processes()
    assert processes, "no Fugou process found in deploy/"
    for p in processes:
        call = p.call
        assert call is not None, f"{p.where}: not a `python -m services.<name>` command: {p.argv}"
        assert call.service in SPECS, f"{p.where}: services.{call.service} is not a registered service"
        assert call.subcommand in CLI_SUBCOMMANDS, (
            f"{p.where}: subcommand {call.subcommand!r}, the CLI has {sorted(CLI_SUBCOMMANDS)}"
        )
        with monkeypatch.context() as m:
            seen = _run_cli(m, call, p.env)
        assert seen.get("spec") == call.service, f"{p.where}: services.{call.service} ran {seen.get('spec')}"
        if call.subcommand == "migrate":
            assert seen.get("migrated"), f"{p.where}: migrate did not migrate"
            continue
        roles = [r.strip() for r in (call.option("--roles") or "api,consumer,relay").split(",")]
        assert roles and set(roles) <= CLI_ROLES, f"{p.where}: roles {roles}, the CLI knows {sorted(CLI_ROLES)}"
        assert seen["roles"] == set(roles)
        assert seen["host"] == "0.0.0.0", f"{p.where}: a container must listen on 0.0.0.0, not {seen['host']}"
        assert str(seen["port"]) == call.option("--port"), f"{p.where}: port {seen['port']}"
        if call.service == "gateway" and "api" in roles:  # the front door: console and every service's API
            paths = routes_of(seen["app"])
            wanted = {"/console"} | {path for name in PROXIED for path, _ in route_table(SPECS[name].routers)}
            assert wanted <= paths, f"{p.where}: the gateway does not serve {sorted(wanted - paths)[:5]}…"


def test_every_services_module_named_anywhere_in_the_deploy_files_exists() -> None:
    for path, text in deploy_texts().items():
        for module in re.findall(r"-m\s+services\.([A-Za-z_]\w*)", text):
            assert module in SPECS or module == "embedded", f"{path} names services.{module}, which does not exist"


def test_the_image_exposes_its_port_and_starts_the_embedded_mode_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    import services.embedded as embedded

    text = DOCKERFILE.read_text(encoding="utf-8")
    cmds = re.findall(r"^CMD\s+(\[.*\])\s*$", text, re.M)
    assert len(cmds) == 1, "deploy/Dockerfile wants one exec-form CMD"
    argv = json.loads(cmds[0])
    assert argv[:3] == ["python", "-m", "services.embedded"], argv
    exposed = re.findall(r"^EXPOSE\s+(\d+)", text, re.M)
    seen: dict[str, Any] = {}
    monkeypatch.setattr(cli, "configure_logging", lambda *a, **k: None)
    monkeypatch.setattr(embedded, "build_embedded_app", lambda settings, announce=True: object())
    monkeypatch.setattr(
        embedded, "serve", lambda app, host, port, log_level="warning": seen.update(host=host, port=port)
    )
    with clock.installed(clock.current()):  # the entry point installs its own clock: the suite's comes back
        embedded.main(argv[3:])
    assert seen["host"] == "0.0.0.0"
    assert exposed == [str(seen["port"])], f"EXPOSE {exposed}, the default command listens on {seen['port']}"
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must not run as root"
    assert "pip install ." in text, "the image installs the project from pyproject.toml"


# ------------------------------------------------------------------ settings and databases


def test_every_fugou_variable_named_in_the_deploy_files_is_a_field_of_settings() -> None:
    fields = set(Settings.model_fields)
    named = {
        (path, m) for path, text in deploy_texts().items() for m in re.findall(r"\bFUGOU_[A-Z0-9_]*[A-Z0-9]", text)
    }
    assert named, "no FUGOU_ variable found in the deploy files"
    unknown = sorted(f"{path}: {name}" for path, name in named if name.removeprefix("FUGOU_").lower() not in fields)
    assert not unknown, "not settings of shared.settings.Settings:\n" + "\n".join(unknown)
    env_names = {name for p in all_fugou_processes() for name in p.env}
    stray = sorted(n for n in env_names if not n.startswith("FUGOU_"))
    assert not stray, f"Fugou containers get variables the settings ignore: {stray}"


def test_each_process_gets_production_settings_the_settings_accept_and_only_its_own_postgres_database(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for p in all_fugou_processes():
        call = p.call
        assert call is not None, f"{p.where}: not a `python -m services.<name>` command: {p.argv}"
        with monkeypatch.context() as m:
            for name in [n for n in os.environ if n.startswith("FUGOU_")]:
                m.delenv(name)
            for name, value in p.env.items():
                m.setenv(name, value)
            try:
                settings = Settings(_env_file=None)  # type: ignore[call-arg]
            except Exception as exc:
                pytest.fail(f"{p.where}: the settings refuse the environment: {exc}")
        assert settings.env == "production", f"{p.where}: FUGOU_ENV={settings.env}"
        assert settings.bus == "kafka", f"{p.where}: FUGOU_BUS={settings.bus}"
        url = settings.database_url(call.service)
        assert url.startswith("postgresql+asyncpg://"), f"{p.where}: services.{call.service} would use {url}"
        others = [s for s in SPECS if s != call.service and getattr(settings, f"{s}_database_url")]
        assert not others, f"{p.where}: services.{call.service} also gets the database URL of {others}"


def _database_urls() -> list[tuple[str, str, str]]:
    """(where, variable, url) for every *_DATABASE_URL value in compose and the k8s Secret."""
    out = []
    for name, svc in compose()["services"].items():
        for var, value in _compose_env(svc).items():
            if var.endswith("_DATABASE_URL"):
                out.append((f"compose {name}", var, value))
    for secret in k8s_of_kind("Secret") + k8s_of_kind("ConfigMap"):
        for var, value in {**(secret.get("data") or {}), **(secret.get("stringData") or {})}.items():
            if var.endswith("_DATABASE_URL"):
                out.append((f"k8s {secret['kind']} {secret['metadata']['name']}", var, str(value)))
    return out


def test_every_database_url_uses_postgresql_with_asyncpg() -> None:
    urls = _database_urls()
    assert {var for _, var, _ in urls} >= {f"FUGOU_{s.upper()}_DATABASE_URL" for s in SPECS}
    for where, var, url in urls:
        assert url.startswith("postgresql+asyncpg://"), f"{where}: {var}={url}"
    for path, text in deploy_texts().items():
        for scheme in re.findall(r"\b(postgres(?:ql)?(?:\+\w+)?)://", text):
            assert scheme == "postgresql+asyncpg", f"{path}: a {scheme}:// URL; the services use postgresql+asyncpg"


def _database_name(url: str) -> str:
    return url.rsplit("/", 1)[-1].split("?", 1)[0]


def test_no_two_services_share_a_database() -> None:
    by_source: dict[str, dict[str, set[str]]] = {}
    for where, var, url in _database_urls():
        source = "compose" if where.startswith("compose") else where
        service = var.removeprefix("FUGOU_").removesuffix("_DATABASE_URL").lower()
        by_source.setdefault(source, {}).setdefault(service, set()).add(_database_name(url))
    for source, dbs in by_source.items():
        for service, names in dbs.items():
            assert len(names) == 1, f"{source}: {service} is given several databases: {sorted(names)}"
        flat = [name for names in dbs.values() for name in names]
        assert len(set(flat)) == len(flat), f"{source}: services share a database: {dbs}"


def test_compose_postgres_creates_every_database_the_services_connect_to() -> None:
    created = set(re.findall(r"CREATE DATABASE\s+\"?(\w+)\"?", INIT_SQL.read_text(encoding="utf-8"), re.I))
    wanted = {_database_name(url) for where, _, url in _database_urls() if where.startswith("compose")}
    assert wanted <= created, f"{INIT_SQL.name} does not create {sorted(wanted - created)}"
    mounts = [
        v if isinstance(v, str) else f"{v['source']}:{v['target']}"
        for v in compose()["services"]["postgres"].get("volumes", [])
    ]
    assert any(
        (COMPOSE_FILE.parent / m.split(":")[0]).resolve() == INIT_SQL.resolve()
        and m.split(":")[1].startswith("/docker-entrypoint-initdb.d/")
        for m in mounts
    ), f"postgres does not mount {INIT_SQL.relative_to(ROOT)} into /docker-entrypoint-initdb.d/: {mounts}"


# ------------------------------------------------------------------ topics


def _script(argv: list[str]) -> str:
    return "\n".join(argv)


def topic_steps() -> list[tuple[str, str, dict[str, str]]]:
    """(where, shell script, environment) of every container that runs kafka-topics.sh --create."""
    steps = []
    for name, svc in compose()["services"].items():
        argv = _argv(svc.get("entrypoint")) + _argv(svc.get("command"))
        script = _script(argv).replace("$$", "$")
        if "kafka-topics.sh" in script and "--create" in script:
            steps.append((f"compose service {name!r}", script, _compose_env(svc)))
    for where, _, pod in workloads():
        for role, c in containers(pod):
            script = _script(_argv(c.get("command")) + _argv(c.get("args")))
            if "kafka-topics.sh" in script and "--create" in script:
                steps.append((f"{where} {role} {c['name']!r}", script, k8s_env(c, where)))
    return steps


_CREATE_CALL = re.compile(r"^\s*create\s+([A-Za-z0-9._-]+)\s+(\d+)\s*(?:#.*)?$", re.M)
_LITERAL_TOPIC = re.compile(
    r"--topic[ =]+[\"']?(?:\$\{?\w+\}?)*([A-Za-z0-9._-]+)[\"']?\s+(?:\\\s*)?--partitions[ =]+(\d+)"
)


def created_topics(script: str) -> list[tuple[str, int]]:
    return [(t, int(n)) for t, n in _CREATE_CALL.findall(script) + _LITERAL_TOPIC.findall(script)]


def test_compose_and_kubernetes_each_have_a_topic_creation_step() -> None:
    wheres = [where for where, _, _ in topic_steps()]
    assert any(w.startswith("compose") for w in wheres), "compose has no kafka-topics.sh --create step"
    assert any(not w.startswith("compose") for w in wheres), "deploy/k8s has no kafka-topics.sh --create step"


def test_topic_creation_steps_create_every_topic_of_the_code_and_no_other() -> None:
    wanted = set(all_topics())
    for where, script, _ in topic_steps():
        names = [t for t, _ in created_topics(script)]
        assert len(names) == len(set(names)), f"{where} creates a topic twice: {names}"
        unknown = sorted(set(names) - wanted)
        assert not unknown, f"{where} creates topics shared.topics does not know: {unknown}"
        assert not wanted - set(names), f"{where} does not create {sorted(wanted - set(names))}"


def test_topic_creation_steps_give_every_topic_the_partition_count_of_the_code() -> None:
    for where, script, _ in topic_steps():
        for topic, count in created_topics(script):
            assert count == partitions(topic), (
                f"{where}: {topic} gets {count} partitions, shared.topics says {partitions(topic)}"
            )


def test_topic_creation_steps_use_the_bootstrap_servers_and_topic_prefix_of_the_services() -> None:
    for where, script, env in topic_steps():
        assert re.search(r"--if-not-exists", script), f"{where}: use --if-not-exists, the step runs again"
        source = "compose" if where.startswith("compose") else "k8s"
        procs = [p for p in all_fugou_processes() if p.where.startswith("compose") == (source == "compose")]
        for var in ("FUGOU_KAFKA_BOOTSTRAP", "FUGOU_KAFKA_PREFIX"):
            if var.removeprefix("FUGOU_").lower() not in Settings.model_fields:
                continue
            values = {p.env.get(var, "") for p in procs}
            assert values == {env.get(var, "")}, f"{where}: {var}={env.get(var)!r}, the services have {values}"
            assert f"{var}" in script, f"{where}: the script ignores {var}"


# ------------------------------------------------------------------ probes, ports, metrics


def _compose_probe_paths(svc: dict[str, Any]) -> list[tuple[int | None, str]]:
    test = " ".join(_argv(svc.get("healthcheck", {}).get("test")))
    return [
        (int(port) if port else None, path)
        for port, path in re.findall(r"https?://[^/:\s'\"]+(?::(\d+))?(/[^\s'\"?]*)", test)
    ]


def test_compose_services_publish_distinct_ports_and_probe_readyz_on_their_own_port(app_routes: set[str]) -> None:
    host_ports: dict[str, str] = {}
    for p in compose_fugou_processes():
        call = p.call
        if call is None or call.subcommand != "run":
            continue
        port = call.option("--port")
        probes = _compose_probe_paths(p.raw)
        assert probes, f"{p.where} has no HTTP healthcheck"
        for probe_port, path in probes:
            assert path in app_routes, f"{p.where} probes {path}, not a route of the app"
            assert path == "/readyz", f"{p.where}: the healthcheck should be /readyz (database and Kafka), not {path}"
            assert str(probe_port) == port, f"{p.where} probes port {probe_port}, listens on {port}"
        published = [str(x).rsplit(":", 2) for x in p.raw.get("ports", [])]
        assert published and all(x[-1].split("/")[0] == port for x in published), (
            f"{p.where} publishes {p.raw.get('ports')}, listens on {port}"
        )
        for x in published:
            assert x[-2] not in host_ports, f"host port {x[-2]} used by {host_ports.get(x[-2])} and {p.where}"
            host_ports[x[-2]] = p.where
    assert host_ports.get("8000", "").endswith("'gateway'"), "the gateway is published on host port 8000"


def test_compose_services_start_after_kafka_topics_and_their_own_migration() -> None:
    services = compose()["services"]
    topic_services = {
        name
        for name, svc in services.items()
        if "kafka-topics.sh" in _script(_argv(svc.get("entrypoint")) + _argv(svc.get("command")))
    }
    for p in compose_fugou_processes():
        call = p.call
        assert call is not None, f"{p.where}: not a `python -m services.<name>` command: {p.argv}"
        deps = p.raw.get("depends_on") or {}
        assert isinstance(deps, dict), f"{p.where}: depends_on needs conditions"
        if call.subcommand == "migrate":
            assert deps.get("postgres", {}).get("condition") == "service_healthy", f"{p.where}: wait for postgres"
            continue
        migrations = [
            n
            for n in services
            if (c := invocation(_argv(services[n].get("command")))) is not None
            and c.service == call.service
            and c.subcommand == "migrate"
        ]
        for dep in migrations + sorted(topic_services):
            assert deps.get(dep, {}).get("condition") == "service_completed_successfully", (
                f"{p.where}: depends_on {dep} with condition service_completed_successfully"
            )
        for dep in ("kafka", "postgres"):
            assert deps.get(dep, {}).get("condition") == "service_healthy", f"{p.where}: wait for {dep} healthy"
            assert services[dep].get("healthcheck"), f"compose service {dep!r} needs a healthcheck"


def test_kubernetes_probes_and_metrics_annotations_name_routes_of_the_app(app_routes: set[str]) -> None:
    for where, obj, pod in workloads():
        if obj["kind"] != "Deployment":
            continue
        annotations = obj["spec"]["template"]["metadata"].get("annotations", {})
        main = [
            c for c in pod["containers"] if (call := invocation(_argv(c.get("command")))) and call.subcommand == "run"
        ]
        assert len(main) == 1, where
        c = main[0]
        call = invocation(_argv(c["command"]))
        assert call is not None
        port = int(call.option("--port") or 0)
        named = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
        assert port in named.values(), f"{where}: listens on {port}, declares ports {named}"
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", f"{where}: liveness on /healthz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", f"{where}: readiness on /readyz"
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            if kind not in c:
                continue
            probe = c[kind]["httpGet"]
            assert probe["path"] in app_routes, f"{where}: {kind} {probe['path']} is not a route of the app"
            assert named.get(probe["port"], probe["port"]) == port, f"{where}: {kind} probes port {probe['port']}"
        assert annotations.get("prometheus.io/scrape") == "true", f"{where}: prometheus.io/scrape"
        assert annotations.get("prometheus.io/path", "/metrics") in app_routes, f"{where}: prometheus.io/path"
        assert annotations.get("prometheus.io/path") == "/metrics"
        assert int(annotations.get("prometheus.io/port", 0)) == port, f"{where}: prometheus.io/port"
        for _role, container in containers(pod):
            requests = (container.get("resources") or {}).get("requests") or {}
            assert {"cpu", "memory"} <= set(requests), f"{where}: {container['name']} wants cpu and memory requests"


# ------------------------------------------------------------------ calls between services

# The services that call segmentation's HTTP API (FUGOU_SEGMENTATION_URL).
SEGMENTATION_CLIENTS = {"coupons", "notifications"}


def assert_reaches(p: Process, var: str, service: str) -> None:
    """p's variable `var` is a URL where `service` answers: in compose the compose service of
    that name, on the port it listens on inside the network; in Kubernetes a Service (in the
    namespace fugou) that selects that service's pods, on one of its ports."""
    url = p.env.get(var, "")
    m = re.fullmatch(r"http://([a-z0-9.-]+):(\d+)/?", url)
    assert m, f"{p.where}: {var}={url!r}, want http://<host>:<port>"
    host, port = m.group(1), m.group(2)
    if p.where.startswith("compose"):
        ports = {
            q.name: q.call.option("--port") for q in compose_fugou_processes() if q.call and q.call.subcommand == "run"
        }
        assert host == service and port == ports.get(service), (
            f"{p.where}: {var}={url}; {service} listens on {service}:{ports.get(service)}"
        )
        return
    pods = [
        d["spec"]["template"]["metadata"]["labels"]
        for d in k8s_of_kind("Deployment")
        if d["metadata"]["name"] == f"fugou-{service}"
    ]
    assert len(pods) == 1, f"no Deployment fugou-{service}"
    k8s_services = {
        s["metadata"]["name"]: s
        for s in k8s_of_kind("Service")
        if s["spec"].get("selector", {}).items() <= pods[0].items()
    }
    name = host.split(".")[0]
    assert name in k8s_services, f"{p.where}: {var}={url}; no Service {name!r} selects the {service} pods"
    if "." in host:
        assert host.split(".")[1] == "fugou", f"{p.where}: {url} is not in the namespace fugou"
    ports = {str(x["port"]) for x in k8s_services[name]["spec"]["ports"]}
    assert port in ports, f"{p.where}: {var}={url}; Service {name} has ports {sorted(ports)}"


def test_the_services_that_call_segmentation_are_pointed_at_its_api() -> None:
    """coupons and notifications reach segmentation at FUGOU_SEGMENTATION_URL."""
    assert set(SPECS) >= SEGMENTATION_CLIENTS and "segmentation" in SPECS
    seen = set()
    for p in all_fugou_processes():
        call = p.call
        if call is None or call.service not in SEGMENTATION_CLIENTS or call.subcommand != "run":
            continue
        assert_reaches(p, "FUGOU_SEGMENTATION_URL", "segmentation")
        seen.add((p.where.startswith("compose"), call.service))
    wanted = {(source, s) for source in (True, False) for s in SEGMENTATION_CLIENTS}
    assert seen == wanted, f"no `run` process for {sorted(wanted - seen)} (compose=True)"


def test_the_gateway_is_the_front_door_to_every_other_service() -> None:
    """The gateway forwards each other service's routes to FUGOU_<SERVICE>_URL (services/front_door.py):
    every gateway `run` process serves the API and has all of them, each pointing at that service."""
    assert set(PROXIED) == set(SPECS) - {"gateway"}
    seen = set()
    for p in all_fugou_processes():
        call = p.call
        if call is None or call.service != "gateway" or call.subcommand != "run":
            continue
        assert "api" in (call.option("--roles") or "api").split(","), f"{p.where}: the front door serves the API"
        for service in PROXIED:
            assert_reaches(p, f"FUGOU_{service.upper()}_URL", service)
        seen.add("compose" if p.where.startswith("compose") else "k8s")
    assert seen == {"compose", "k8s"}, seen


LOCAL_SERVICES = DEPLOY / "local" / "services.sh"
LOCAL_UP = DEPLOY / "local" / "up.sh"


def test_make_up_gives_the_gateway_every_other_services_url_on_its_own_port() -> None:
    """deploy/local/services.sh (sourced by up.sh), run: each service's port and the URLs it gets."""
    script = (
        f"set -euo pipefail; source {shlex.quote(str(LOCAL_SERVICES))}\n"
        'for s in "${services[@]}"; do (service_urls "$s"; echo "$s ${port[$s]} '
        "$(env | grep -E '^FUGOU_[A-Z]+_URL=' | sort | tr '\\n' ' ')\"); done"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUGOU_")} | {"FUGOU_LOYALTY_URL": "stale"}
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=30, check=True)
    ports: dict[str, int] = {}
    urls: dict[str, dict[str, str]] = {}
    for line in out.stdout.splitlines():
        service, port, *given = line.split()
        ports[service] = int(port)
        urls[service] = dict(g.split("=", 1) for g in given)
    assert set(ports) == set(SPECS) and ports["gateway"] == 8000, ports
    assert len(set(ports.values())) == len(ports), f"two services on one port: {ports}"
    url_of = {service: f"http://127.0.0.1:{port}" for service, port in ports.items()}
    assert urls["gateway"] == {f"FUGOU_{s.upper()}_URL": url_of[s] for s in PROXIED}, urls["gateway"]
    for client in SEGMENTATION_CLIENTS:
        assert urls[client] == {"FUGOU_SEGMENTATION_URL": url_of["segmentation"]}, urls[client]
    for other in set(SPECS) - SEGMENTATION_CLIENTS - {"gateway"}:
        assert urls[other] == {}, f"{other} gets {urls[other]}"
    # up.sh starts each service with them, on that port.
    up = LOCAL_UP.read_text(encoding="utf-8")
    assert re.search(r'^source "\$here/services\.sh"', up, re.M), "up.sh does not source services.sh"
    assert 'service_urls "$svc"' in up and '-m "services.$svc" run --port "${port[$svc]}"' in up


# ------------------------------------------------------------------ kubernetes consistency


def test_every_migrate_init_container_gets_the_same_environment_and_image_as_its_service() -> None:
    for where, obj, pod in workloads():
        if obj["kind"] != "Deployment":
            continue
        main = pod["containers"][0]
        for init in pod.get("initContainers") or []:
            assert init["image"] == main["image"], f"{where}: init {init['name']} uses another image"
            assert init.get("envFrom") == main.get("envFrom") and init.get("env") == main.get("env"), (
                f"{where}: init container {init['name']!r} and {main['name']!r} get different environments"
            )


def test_every_kubernetes_object_lives_in_the_fugou_namespace() -> None:
    namespaces = [o["metadata"]["name"] for o in k8s_of_kind("Namespace")]
    assert namespaces == ["fugou"], namespaces
    for file, obj in k8s_objects():
        if obj.get("kind") == "Namespace":
            continue
        assert obj["metadata"].get("namespace") == "fugou", f"{file}: {obj['kind']} {obj['metadata']['name']}"


def test_the_secret_template_holds_only_placeholders_marked_change_me() -> None:
    docs = [d for d in yaml.safe_load_all(SECRET_TEMPLATE.read_text(encoding="utf-8")) if d]
    assert [d["kind"] for d in docs] == ["Secret"]
    values = {**(docs[0].get("stringData") or {}), **(docs[0].get("data") or {})}
    assert {"FUGOU_API_KEY_PEPPER", "FUGOU_ADMIN_TOKEN", "FUGOU_INTERNAL_TOKEN"} <= set(values)
    for key, value in values.items():
        assert PLACEHOLDER in str(value), f"{SECRET_TEMPLATE.name}: {key} must be a {PLACEHOLDER} placeholder"
    for other in K8S_DIR.glob("*.yaml"):
        if other != SECRET_TEMPLATE:
            kinds = [d.get("kind") for d in yaml.safe_load_all(other.read_text(encoding="utf-8")) if d]
            assert "Secret" not in kinds, f"{other.name}: secrets belong in {SECRET_TEMPLATE.name} only"


def test_the_kustomization_applies_every_manifest_except_the_secret_template() -> None:
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text(encoding="utf-8"))
    listed = set(kustomization["resources"])
    manifests = {p.name for p in K8S_DIR.glob("*.yaml")} - {KUSTOMIZATION.name, SECRET_TEMPLATE.name}
    assert listed == manifests, f"kustomization lists {sorted(listed)}, deploy/k8s has {sorted(manifests)}"
    images = {i["name"] for i in kustomization.get("images", [])}
    used = {
        c["image"].split(":")[0]
        for _, _, pod in workloads()
        for _, c in containers(pod)
        if _image_is_fugou(c.get("image"))
    }
    assert used <= images, f"kustomization cannot set the images {sorted(used - images)}"


def test_deployed_notifications_fail_messages_on_unconfigured_channels_and_link_a_public_url() -> None:
    """The console channel is for `make run`: a deployed notifications service must not pretend an
    SMS went out when the merchant configured no SMS provider; its unsubscribe links need an
    address customers can open."""
    seen = set()
    for p in all_fugou_processes():
        call = p.call
        if call is None or call.service != "notifications" or call.subcommand != "run":
            continue
        assert p.env.get("FUGOU_NOTIFY_UNCONFIGURED") == "fail", f"{p.where}: FUGOU_NOTIFY_UNCONFIGURED"
        url = p.env.get("FUGOU_PUBLIC_URL", "")
        assert re.match(r"^(https?://|\$\{FUGOU_PUBLIC_URL)", url), f"{p.where}: FUGOU_PUBLIC_URL={url!r}"
        seen.add(p.where.split(":")[0])
    assert len(seen) >= 2, seen  # compose and Kubernetes
