"""compose.yaml and the Dockerfile it builds from, checked without a Docker engine."""

from __future__ import annotations

import hashlib
import importlib
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.config.boot_env import OPENAI_FORMAT_VENDORS

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

MODELBUS_SERVICES = ("config", "router", "providers", "secrets", "gateway")
PROVIDER_KEY_VARS = frozenset(key_var for _, key_var, *_ in OPENAI_FORMAT_VENDORS)
"""The API key variables the built-in configuration knows (services/config/boot_env.py)."""
KEY_LIKE = re.compile(r"API_KEY|_TOKEN|SECRET", re.IGNORECASE)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = compose["services"]
    return services


@pytest.fixture(scope="module")
def scripts() -> dict[str, str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    scripts: dict[str, str] = pyproject["project"]["scripts"]
    return scripts


def _argv(command: str | list[str] | None) -> list[str]:
    if command is None:
        return []
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.partition("=")[::2] for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def _container_ports(service: dict[str, Any]) -> set[int]:
    ports = set()
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            ports.add(int(entry["target"]))
        else:
            ports.add(int(str(entry).split("/")[0].rsplit(":", 1)[-1]))
    return ports


def _depends_on(service: dict[str, Any]) -> set[str]:
    deps = service.get("depends_on") or []
    return set(deps)


# ---------------------------------------------------------------- infrastructure


def test_nats_runs_with_jetstream_enabled(services: dict[str, dict[str, Any]]) -> None:
    argv = _argv(services["nats"].get("command"))
    assert "-js" in argv or "--jetstream" in argv


def test_nats_keeps_its_jetstream_store_on_a_volume(services: dict[str, dict[str, Any]]) -> None:
    argv = _argv(services["nats"]["command"])
    flag = next(f for f in ("--store_dir", "-sd") if f in argv)
    store_dir = argv[argv.index(flag) + 1]
    targets = {str(v).split(":")[1] if isinstance(v, str) else v["target"] for v in services["nats"]["volumes"]}
    assert store_dir in targets


def test_nats_exposes_the_client_and_monitoring_ports(services: dict[str, dict[str, Any]]) -> None:
    assert {4222, 8222} <= _container_ports(services["nats"])


def test_jaeger_exposes_otlp_grpc_otlp_http_and_the_ui(services: dict[str, dict[str, Any]]) -> None:
    jaeger = services["jaeger"]
    assert jaeger["image"].startswith("jaegertracing/all-in-one")
    assert {4317, 4318, 16686} <= _container_ports(jaeger)
    assert _environment(jaeger).get("COLLECTOR_OTLP_ENABLED") == "true"


# ---------------------------------------------------------------- modelbus services


def test_every_modelbus_service_is_built_from_the_repository(services: dict[str, dict[str, Any]]) -> None:
    for name in MODELBUS_SERVICES:
        build = services[name]["build"]
        context = build if isinstance(build, str) else build.get("context", ".")
        assert (ROOT / context).resolve() == ROOT, name


def test_every_modelbus_service_runs_a_console_script_declared_in_pyproject(
    services: dict[str, dict[str, Any]], scripts: dict[str, str]
) -> None:
    for name in MODELBUS_SERVICES:
        argv = _argv(services[name].get("command"))
        assert argv, f"{name} has no command"
        assert argv[0] in scripts, f"{name} runs {argv[0]!r}, which is not in [project.scripts]"


def test_every_console_script_a_service_runs_points_at_an_importable_callable(
    services: dict[str, dict[str, Any]], scripts: dict[str, str]
) -> None:
    for name in MODELBUS_SERVICES:
        target = scripts[_argv(services[name]["command"])[0]]
        module_name, _, attribute = target.partition(":")
        obj: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            obj = getattr(obj, part)
        assert callable(obj), f"{target} is not callable"


def test_each_service_runs_its_own_entry_point(services: dict[str, dict[str, Any]]) -> None:
    expected = {
        "config": "modelbus-config",
        "router": "modelbus-router",
        "providers": "modelbus-provider",
        "secrets": "modelbus-secrets",
        "gateway": "modelbus-gateway",
    }
    assert {name: _argv(services[name]["command"])[0] for name in MODELBUS_SERVICES} == expected


def test_every_modelbus_service_connects_to_the_nats_service(services: dict[str, dict[str, Any]]) -> None:
    for name in MODELBUS_SERVICES:
        url = _environment(services[name]).get("NATS_URL", "")
        host = re.fullmatch(r"nats://([^:/]+):(\d+)", url)
        assert host, f"{name}: NATS_URL={url!r}"
        assert host.group(1) in services and host.group(1) == "nats", name
        assert int(host.group(2)) in _container_ports(services["nats"]), name


def test_every_modelbus_service_exports_traces_to_jaeger_over_otlp_http(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in MODELBUS_SERVICES:
        env = _environment(services[name])
        assert env.get("OTEL_EXPORTER_OTLP_ENDPOINT") == "http://jaeger:4318", name
        assert env.get("OTEL_SERVICE_NAME") == f"modelbus-{name}", name


def test_every_modelbus_service_starts_after_nats_and_jaeger(services: dict[str, dict[str, Any]]) -> None:
    for name in MODELBUS_SERVICES:
        assert {"nats", "jaeger"} <= _depends_on(services[name]), name


def test_the_router_runs_two_replicas(services: dict[str, dict[str, Any]]) -> None:
    router = services["router"]
    assert router["deploy"]["replicas"] == 2
    assert "container_name" not in router  # a fixed name would forbid a second replica


# ---------------------------------------------------------------- the HTTP gateway


def _published(service: dict[str, Any]) -> list[str]:
    return [str(entry) for entry in service.get("ports", [])]


def test_the_gateway_publishes_its_http_port_on_the_hosts_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    assert _published(services["gateway"]) == ["127.0.0.1:8787:8787"]


def test_the_gateway_listens_inside_its_container_on_the_port_it_publishes(
    services: dict[str, dict[str, Any]],
) -> None:
    host, _, port = _environment(services["gateway"])["MODELBUS_HTTP"].rpartition(":")
    assert host == "0.0.0.0"  # the container's loopback would be unreachable through the published port
    assert _container_ports(services["gateway"]) == {int(port)}


def test_the_gateway_starts_after_the_routers_it_forwards_to(services: dict[str, dict[str, Any]]) -> None:
    assert "router" in _depends_on(services["gateway"])


def test_the_gateway_reads_a_keys_file_of_hashes_whose_hash_comes_from_the_hosts_environment(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    gateway = services["gateway"]
    [mount] = gateway["configs"]
    assert _environment(gateway)["MODELBUS_GATEWAY_KEYS"] == mount["target"]
    content = compose["configs"][mount["source"]]["content"]
    required = re.fullmatch(r'.*"\$\{MODELBUS_GATEWAY_KEY_SHA256:\?[^}]+\}".*', content, re.DOTALL)
    assert required, "the hash must be required from the host's environment, not written into the file"
    digest = hashlib.sha256(b"mb-example").hexdigest()
    rendered = json.loads(re.sub(r"\$\{MODELBUS_GATEWAY_KEY_SHA256:\?[^}]+\}", digest, content))
    assert rendered == {"keys": [{"name": "default", "sha256": digest}]}
    assert not re.search(r"mb-[A-Za-z0-9_-]{20,}", COMPOSE.read_text(encoding="utf-8"))  # no key value anywhere


# ---------------------------------------------------------------- credentials


def test_provider_api_keys_reach_the_secrets_service(services: dict[str, dict[str, Any]]) -> None:
    env = _environment(services["secrets"])
    assert env.keys() >= PROVIDER_KEY_VARS
    for var in PROVIDER_KEY_VARS:
        # Interpolated from the host's environment, never written into the file.
        assert env[var] in (f"${{{var}:-}}", f"${{{var}}}", f"${var}"), var


def test_no_service_but_secrets_gets_a_provider_api_key(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if name == "secrets":
            continue
        assert not (PROVIDER_KEY_VARS & _environment(service).keys()), name
        assert not [var for var in _environment(service) if KEY_LIKE.search(var)], name
        assert "env_file" not in service, f"{name}: an env_file could carry keys"
        for var in PROVIDER_KEY_VARS:
            assert var not in yaml.safe_dump(service), f"{name} mentions {var}"


# ---------------------------------------------------------------- Dockerfile


def test_the_dockerfile_exists_and_installs_the_package() -> None:
    assert DOCKERFILE.is_file()
    lines = [line.strip() for line in DOCKERFILE.read_text(encoding="utf-8").splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    assert instructions[0].startswith("FROM python:3.11")
    assert any(re.match(r"COPY\s+\.\s+", line) for line in instructions)
    assert any(re.search(r"\bpip install \.(\s|$)", line) for line in instructions)


def test_the_docker_build_context_keeps_what_pip_install_needs() -> None:
    ignored = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    needed = {"pyproject.toml", "shared", "services", pyproject["project"]["readme"]}
    assert not needed & ignored
    assert ".venv" in ignored and ".git" in ignored


# ---------------------------------------------------------------- metrics: Prometheus and Grafana

METRICS_PORT = 9464


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path → host path of a service's bind mounts (``:ro`` dropped)."""
    out = {}
    for entry in service.get("volumes", []):
        host, container, *_ = str(entry).split(":")
        out[container] = host
    return out


def test_every_modelbus_service_serves_metrics_on_one_port_inside_the_compose_network(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in MODELBUS_SERVICES:
        env = _environment(services[name])
        assert env.get("MODELBUS_METRICS_PORT") == str(METRICS_PORT), name
        assert env.get("MODELBUS_METRICS_ADDR") == "0.0.0.0", name  # reachable by Prometheus's container
        assert METRICS_PORT not in _container_ports(services[name]), name  # never published to the host


def test_prometheus_scrapes_every_modelbus_service_and_each_router_replica(services: dict[str, dict[str, Any]]) -> None:
    mounted = _mounts(services["prometheus"])
    config = yaml.safe_load((ROOT / mounted["/etc/prometheus/prometheus.yml"]).read_text(encoding="utf-8"))
    discovered = {
        (name, sd["port"])
        for job in config["scrape_configs"]
        for sd in job.get("dns_sd_configs", [])
        for name in sd["names"]
    }
    # DNS service discovery (type A) finds every replica of a service, not one of them at random.
    assert {(name, METRICS_PORT) for name in MODELBUS_SERVICES} <= discovered
    assert _published(services["prometheus"]) == ["127.0.0.1:9090:9090"]


def test_grafana_is_provisioned_with_the_prometheus_datasource_and_the_repositorys_dashboard(
    services: dict[str, dict[str, Any]],
) -> None:
    grafana = services["grafana"]
    mounted = _mounts(grafana)
    provisioning = ROOT / mounted["/etc/grafana/provisioning"]
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text(encoding="utf-8"))
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((provisioning / "dashboards" / "modelbus.yml").read_text(encoding="utf-8"))
    dashboards = provider["providers"][0]["options"]["path"]
    assert (ROOT / mounted[dashboards] / "modelbus.json").is_file()
    assert _published(grafana) == ["127.0.0.1:3000:3000"]
    assert "prometheus" in _depends_on(grafana)
