"""``deploy/`` for several replicas on the PostgreSQL store.

- Kubernetes: every manifest passes the API server's schemas (kubernetes-validate, strict, so an
  unknown or misspelt field fails), the kustomization lists exactly those manifests, the
  Deployment runs three replicas with the DSN and the auth secret from Secrets, and the ConfigMap
  is config/production.example.toml with the PostgreSQL store.
- The result vault: every pod mounts one ReadWriteMany claim, at the vault path the pods' settings
  name; in compose, every replica mounts one named volume at its vault path, handed to the image's
  user before the replicas start.
- Compose: the gateway replicas share the ``postgres`` service and one ``sandbox`` service, every
  dependency names a service, and Prometheus scrapes every replica.
- ``docker compose config``, where a docker binary with the compose plugin is installed.

test_dashboard.py checks the dashboard against a real scrape; these read the files only.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args, get_origin
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from pydantic import BaseModel

from adapters.registry import PROVIDERS
from gateway.settings import Settings, StoreSettings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
PRODUCTION = ROOT / "config" / "production.example.toml"
DOCKERFILE = DEPLOY / "Dockerfile"

# The oldest Kubernetes minor that kubernetes-validate>=1.30 (pyproject.toml) ships schemas for:
# manifests valid there are valid on every later one that still serves these API versions.
KUBERNETES_VERSION = "1.30"
REPLICAS = 3
STORE_SECRET = {"name": "jobgate-store", "key": "dsn"}
AUTH_SECRET = {"name": "jobgate-auth", "key": "secret"}
# Settings the PostgreSQL store adds (gateway/settings.py is gaining them alongside these files).
NEW_SETTINGS = {"store.dsn", "store.dsn_file"}
NEW_STORE_KINDS = {"postgres"}
SECRET_ENV = re.compile(r"(API_KEY|DSN|SECRET|PASSWORD|TOKEN)$")
# Stand-ins for the values the Deployment takes from Secrets, to load the pods' settings.
SECRET_STAND_INS = {
    "JOBGATE_STORE__DSN": "postgresql://jobgate:password@postgres.example.internal:5432/jobgate",
    "JOBGATE_AUTH__SECRET": "a-stand-in-for-the-jobgate-auth-secret-0123456789",
}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def manifest_files() -> list[Path]:
    return sorted(path for path in K8S.glob("*.yaml") if path.name != "kustomization.yaml")


def resource(kind: str) -> dict[str, Any]:
    """The one manifest of ``kind`` under deploy/k8s."""
    [found] = [doc for path in manifest_files() for doc in documents(path) if doc["kind"] == kind]
    return found


def deployment_container() -> dict[str, Any]:
    containers: list[dict[str, Any]] = resource("Deployment")["spec"]["template"]["spec"][
        "containers"
    ]
    [container] = containers
    return container


def configmap_settings() -> dict[str, Any]:
    text: str = resource("ConfigMap")["data"]["config.toml"]
    return tomllib.loads(text)


def clear_jobgate_env(patch: pytest.MonkeyPatch) -> None:
    for key in [key for key in os.environ if key.startswith("JOBGATE_")]:
        patch.delenv(key)


def pod_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    """The settings a pod runs with: the ConfigMap's file under the Deployment's environment, each
    value from a Secret given a stand-in."""
    config = tmp_path / "config.toml"
    config.write_text(resource("ConfigMap")["data"]["config.toml"])
    with monkeypatch.context() as patch:
        clear_jobgate_env(patch)
        for item in deployment_container()["env"]:
            name = item["name"]
            value = item["value"] if "value" in item else SECRET_STAND_INS.get(name, "stand-in")
            patch.setenv(name, str(value))
        return load_settings(config)


def image_user() -> str:
    """The ``uid:gid`` the image runs as (the Dockerfile's last ``USER``)."""
    users = re.findall(r"^USER\s+(\S+)\s*$", DOCKERFILE.read_text(), re.MULTILINE)
    assert users, "deploy/Dockerfile sets no USER"
    user: str = users[-1]
    return user


# -- Kubernetes: the schemas ----------------------------------------------------------------------


def schema_errors(doc: dict[str, Any]) -> str | None:
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        where = ".".join(str(part) for part in error.absolute_path) or "(top level)"
        return f"{doc.get('kind')} {where}: {error.message}"
    return None


@pytest.mark.parametrize("path", manifest_files(), ids=lambda path: path.name)
def test_every_manifest_passes_the_kubernetes_schemas(path: Path) -> None:
    docs = documents(path)
    assert docs, f"{path.name} holds no manifest"
    for doc in docs:
        assert schema_errors(doc) is None


def test_the_schema_check_refuses_a_misspelt_field() -> None:
    """The check above can fail: strict mode refuses a field the API does not have."""
    deployment = resource("Deployment")
    assert schema_errors(deployment) is None
    broken = {**deployment, "spec": {**deployment["spec"], "replica": REPLICAS}}
    error = schema_errors(broken)
    assert error is not None
    assert "replica" in error


def test_the_kustomization_lists_every_manifest() -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed)), "a resource is listed twice"
    missing = [name for name in listed if not (K8S / name).is_file()]
    assert not missing, f"listed but not in deploy/k8s: {missing}"
    assert set(listed) == {path.name for path in manifest_files()}, (
        "every manifest in deploy/k8s is applied, and nothing else"
    )


# -- Kubernetes: replicas, the store and secrets --------------------------------------------------


def test_the_deployment_runs_three_replicas_on_the_shared_store() -> None:
    deployment = resource("Deployment")
    assert deployment["spec"]["replicas"] == REPLICAS
    # Recreate would take every replica down at each rollout; it was only for the SQLite file.
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    # The one claim is the vault, shared by every pod (below); anything else per pod would be
    # state one replica holds and the others miss: the replicas share PostgreSQL.
    claims = [
        volume["persistentVolumeClaim"]["claimName"]
        for volume in volumes
        if "persistentVolumeClaim" in volume
    ]
    assert claims == [resource("PersistentVolumeClaim")["metadata"]["name"]]
    declared = {volume["name"] for volume in volumes}
    mounted = {mount["name"] for mount in deployment_container()["volumeMounts"]}
    assert mounted <= declared
    [config] = [volume["configMap"]["name"] for volume in volumes if "configMap" in volume]
    assert config == resource("ConfigMap")["metadata"]["name"]
    assert configmap_settings()["store"]["kind"] == "postgres"


def test_the_dsn_comes_from_a_secret_never_a_literal() -> None:
    env = {item["name"]: item for item in deployment_container()["env"]}
    dsn = env["JOBGATE_STORE__DSN"]
    assert "value" not in dsn
    assert dsn["valueFrom"] == {"secretKeyRef": STORE_SECRET}
    # Replicas on PostgreSQL refuse to start without one shared auth secret.
    assert env["JOBGATE_AUTH__SECRET"]["valueFrom"] == {"secretKeyRef": AUTH_SECRET}
    for name, item in env.items():
        if SECRET_ENV.search(name):
            assert "secretKeyRef" in item.get("valueFrom", {}), f"{name} is not from a Secret"
    literals = [str(item.get("value", "")) for item in env.values()]
    assert not [value for value in literals if re.match(r"postgres(ql)?://", value)]
    assert "dsn" not in configmap_settings()["store"], "the DSN is a secret, not ConfigMap data"


def test_the_disruption_budget_and_service_select_the_pods() -> None:
    labels = resource("Deployment")["spec"]["template"]["metadata"]["labels"]
    budget = resource("PodDisruptionBudget")["spec"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    # At least one pod may go at a time, or a node drain waits for ever.
    assert 1 <= budget["minAvailable"] < REPLICAS
    service = resource("Service")["spec"]
    assert service["selector"].items() <= labels.items()
    ports = {port["name"] for port in deployment_container()["ports"]}
    assert {port["targetPort"] for port in service["ports"]} <= ports


# -- Kubernetes: the result vault ----------------------------------------------------------------


def test_every_pod_mounts_one_read_write_many_vault_at_the_vault_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    claim = resource("PersistentVolumeClaim")
    spec = claim["spec"]
    # Three pods on several nodes mount it at once, and each serves the copies the others captured.
    assert spec["accessModes"] == ["ReadWriteMany"]
    # The cluster's default class is usually block storage, ReadWriteOnce only: one is named.
    assert spec.get("storageClassName"), "no storageClassName: the default class is seldom RWX"
    assert spec["resources"]["requests"]["storage"]

    pod = resource("Deployment")["spec"]["template"]["spec"]
    [volume] = [
        volume
        for volume in pod["volumes"]
        if volume.get("persistentVolumeClaim", {}).get("claimName") == claim["metadata"]["name"]
    ]
    assert not volume["persistentVolumeClaim"].get("readOnly", False)
    [mount] = [m for m in deployment_container()["volumeMounts"] if m["name"] == volume["name"]]
    assert not mount.get("readOnly", False), "the replicas write captured results there"
    assert "subPath" not in mount, "every pod sees the whole vault"

    settings = pod_settings(monkeypatch, tmp_path)
    assert settings.store.kind == "postgres"
    assert str(settings.vault_path()) == mount["mountPath"], (
        "the vault path the pods use is not where the claim is mounted"
    )
    # The root file system is read-only: the vault must be on the claim, never beside it.
    assert deployment_container()["securityContext"]["readOnlyRootFilesystem"] is True
    # The pods may write it: their group owns it where the driver applies fsGroup.
    uid, gid = image_user().split(":")
    security = pod["securityContext"]
    assert (str(security["runAsUser"]), str(security["fsGroup"])) == (uid, gid)


def test_the_production_example_keeps_the_vault_in_the_images_volume() -> None:
    """The example, on SQLite in one container, names the vault's default place: results/ beside
    the database, in the image's volume (so a container's restart keeps the copies)."""
    production = tomllib.loads(PRODUCTION.read_text())
    vault = Path(production["vault"]["path"])
    assert vault == Path(production["store"]["path"]).parent / "results"
    [volume] = re.findall(r"^VOLUME\s+\[\"([^\"]+)\"\]", DOCKERFILE.read_text(), re.MULTILINE)
    assert vault.is_relative_to(volume)


# -- Kubernetes: the ConfigMap against the settings and the production example --------------------


def unknown_keys(data: dict[str, Any], model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted keys of ``data`` that ``model`` (a settings section) does not have."""
    unknown = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        field = model.model_fields.get(key)
        if dotted in NEW_SETTINGS:
            continue
        if field is None:
            unknown.append(dotted)
            continue
        annotation = field.annotation
        if not isinstance(value, dict):
            continue
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            unknown += unknown_keys(value, annotation, f"{dotted}.")
        elif get_origin(annotation) is dict:
            item = get_args(annotation)[1]
            for name, section in value.items():
                unknown += unknown_keys(section, item, f"{dotted}.{name}.")
    return unknown


def test_the_key_check_finds_a_misspelt_key() -> None:
    data = {"store": {"knd": "postgres", "dsn": "x"}, "providers": {"pulse": {"polcy": {}}}}
    assert unknown_keys(data, Settings) == ["store.knd", "providers.pulse.polcy"]


def test_the_configmap_holds_only_known_settings() -> None:
    data = configmap_settings()
    assert unknown_keys(data, Settings) == []
    assert set(data["providers"]) <= set(PROVIDERS)
    kinds = set(get_args(StoreSettings.model_fields["kind"].annotation)) | NEW_STORE_KINDS
    assert data["store"]["kind"] in kinds
    for name, provider in data["providers"].items():
        assert not {"api_key", "callback_secret"} & set(provider), f"a secret for {name}"


def test_the_configmap_is_the_production_example_on_postgres() -> None:
    """The drift guard: everything but the store is config/production.example.toml's."""
    configmap = configmap_settings()
    production = tomllib.loads(PRODUCTION.read_text())
    assert configmap.pop("store") == {"kind": "postgres"}
    production.pop("store")
    assert configmap == production


# -- Compose --------------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COMPOSE)
    return data


def interpolate(value: str) -> str:
    """Compose's ``${NAME:-default}`` with the defaults (as with nothing set); a bare ``${NAME}``
    is refused, since the file must work with no .env file."""

    def default(match: re.Match[str]) -> str:
        if match.group(2) is None:
            raise AssertionError(f"{match.group(0)} has no default")
        return match.group(2)

    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", default, value)


def depends_on(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = service.get("depends_on", {})
    if isinstance(found, list):
        return {name: {"condition": "service_started"} for name in found}
    assert isinstance(found, dict)
    return found


def replicas() -> dict[str, dict[str, Any]]:
    """The gateway services: those that run ``jobgate serve``."""
    return {
        name: service
        for name, service in compose()["services"].items()
        if service.get("command", [None])[0] == "serve"
    }


def container_port(mapping: str) -> int:
    return int(str(mapping).rsplit(":", 1)[-1].split("/")[0])


def test_every_dependency_is_a_service() -> None:
    services = compose()["services"]
    for name, service in services.items():
        for needed, how in depends_on(service).items():
            assert needed in services, f"{name} depends on {needed}, which is not a service"
            assert needed != name
            assert how["condition"] in {
                "service_started",
                "service_healthy",
                "service_completed_successfully",
            }
            if how["condition"] == "service_healthy":
                assert "healthcheck" in services[needed], f"{needed} has no healthcheck"


def test_volumes_are_declared_and_bind_mounts_exist() -> None:
    data = compose()
    declared = set(data.get("volumes") or {})
    used = set()
    for name, service in data["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in declared, f"{name} mounts {source}, which is not declared"
                used.add(source)
    assert used == declared, "a declared volume no service uses"


def test_the_replicas_share_the_postgres_service() -> None:
    services = compose()["services"]
    gateways = replicas()
    assert len(gateways) >= 2, sorted(gateways)
    [postgres_name] = [
        name
        for name, service in services.items()
        if service.get("image", "").startswith("postgres:16")
    ]
    postgres = services[postgres_name]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    data_volume = [v for v in postgres["volumes"] if v.endswith(":/var/lib/postgresql/data")]
    assert data_volume, "the database is kept in a named volume"
    password = postgres["environment"]["POSTGRES_PASSWORD"]
    assert password.startswith("${POSTGRES_PASSWORD"), "the password comes from the environment"

    for name, service in gateways.items():
        env = service["environment"]
        assert env["JOBGATE_STORE__KIND"] == "postgres", name
        assert depends_on(service)[postgres_name] == {"condition": "service_healthy"}, name
        dsn = env["JOBGATE_STORE__DSN"]
        assert f":{password}@" in dsn, f"{name}: the DSN's password is not POSTGRES_PASSWORD's"
        parts = urlsplit(interpolate(dsn))
        assert parts.scheme == "postgresql"
        assert (parts.hostname, parts.port) == (postgres_name, 5432)
        assert parts.username == postgres["environment"]["POSTGRES_USER"]
        assert parts.password == interpolate(password)
        assert parts.path == "/" + postgres["environment"]["POSTGRES_DB"]
        assert not any(volume.endswith(":/var/lib/jobgate") for volume in service["volumes"]), (
            f"{name} still mounts a SQLite volume"
        )

    published = [
        str(mapping).rsplit(":", 1)[0] for s in gateways.values() for mapping in s["ports"]
    ]
    assert len(published) == len(set(published)), "two replicas publish the same host port"


def replica_settings(service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A compose replica's settings: its mounted config under its environment, with defaults."""
    [mounted] = [v for v in service["volumes"] if ":/etc/jobgate/config.toml" in v]
    config = (DEPLOY / mounted.split(":", 1)[0]).resolve()
    with monkeypatch.context() as patch:
        clear_jobgate_env(patch)
        for key, value in service["environment"].items():
            patch.setenv(key, interpolate(str(value)))
        return load_settings(config)


def test_the_replicas_share_one_vault_volume(monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy captured by one replica is served by the other: both mount one named volume at their
    vault path. A new named volume belongs to root, and the gateways run as the image's user, so a
    one-shot service hands it over before they start."""
    data = compose()
    services = data["services"]
    gateways = replicas()
    mounts = set()
    for name, service in gateways.items():
        settings = replica_settings(service, monkeypatch)
        assert settings.store.kind == "postgres", name
        path = str(settings.vault_path())
        [volume] = [v for v in service["volumes"] if v.split(":")[1:2] == [path]]
        source, _, *options = volume.split(":")
        assert source in (data.get("volumes") or {}), f"{name}: the vault is not a named volume"
        assert "ro" not in options, f"{name} mounts the vault read-only"
        mounts.add((source, path))
    assert len(mounts) == 1, f"the replicas mount different vaults: {sorted(mounts)}"
    [(volume, path)] = mounts

    [owner] = [
        name
        for name, service in services.items()
        if name not in gateways and f"{volume}:{path}" in service.get("volumes", [])
    ]
    assert str(services[owner]["user"]) in {"0", "0:0", "root"}
    assert services[owner]["entrypoint"] == ["chown", image_user(), path]
    assert "command" not in services[owner], "an entrypoint of its own clears the image's command"
    assert services[owner].get("restart", "no") == "no"
    for name, service in gateways.items():
        assert depends_on(service)[owner] == {"condition": "service_completed_successfully"}, name


def test_the_replicas_poll_one_shared_sandbox(monkeypatch: pytest.MonkeyPatch) -> None:
    """A job submitted through one replica's in-process sandbox would be unknown to the others'.
    The compose environment, over the mounted config, loads as settings (the store variables
    aside: test_the_replicas_share_the_postgres_service reads them)."""
    data = compose()
    services = data["services"]
    sandbox = services["sandbox"]
    assert sandbox["command"][0] == "sandbox"
    subnet = interpolate(data["networks"]["default"]["ipam"]["config"][0]["subnet"])
    for name, service in replicas().items():
        assert depends_on(service)["sandbox"] == {"condition": "service_healthy"}, name
        [mounted] = [v for v in service["volumes"] if ":/etc/jobgate/config.toml" in v]
        config = (DEPLOY / mounted.split(":", 1)[0]).resolve()
        with monkeypatch.context() as patch:
            for key in [key for key in os.environ if key.startswith("JOBGATE_")]:
                patch.delenv(key)
            for key, value in service["environment"].items():
                if not key.startswith("JOBGATE_STORE__"):
                    patch.setenv(key, interpolate(str(value)))
            settings = load_settings(config)
        assert not settings.sandbox.embedded, name
        assert settings.server.host == "0.0.0.0"
        speed = sandbox["command"][sandbox["command"].index("--speed") + 1]
        assert float(speed) == tomllib.loads(config.read_text())["sandbox"]["speed"]
        assert set(settings.providers) == set(PROVIDERS)
        for provider, options in settings.providers.items():
            assert urlsplit(options.base_url).hostname == "sandbox", f"{name}: {provider}"
            assert settings.provider_key(provider)
        assert settings.providers["pulse"].result_networks == [subnet]
        # Listening on every address, the replicas require keys; on PostgreSQL that takes a secret.
        assert settings.auth_required(), name
        assert len(settings.auth.secret_value() or "") >= 32, name


def test_prometheus_scrapes_every_replica() -> None:
    config = load_yaml(PROMETHEUS)
    [job] = [job for job in config["scrape_configs"] if job["job_name"] == "jobgate"]
    assert job["metrics_path"] == "/metrics"
    targets = {target for group in job["static_configs"] for target in group["targets"]}
    expected = {
        f"{name}:{container_port(mapping)}"
        for name, service in replicas().items()
        for mapping in service["ports"]
    }
    assert targets == expected
    assert set(depends_on(compose()["services"]["prometheus"])) == set(replicas())


# -- references from deploy/ to other files ------------------------------------------------------

# A relative file name such as README.md, config/sandbox.toml or ../config/sandbox.toml; not a part
# of a URL, an absolute (container) path or a dotted host name.
REFERENCE = re.compile(
    r"(?<![\w/.:-])((?:\.{1,2}/)?[\w.-]+(?:/[\w.-]+)*\.(?:md|toml|ya?ml|py|json))(?![\w/-])"
)


def comment_references() -> Iterator[tuple[Path, str]]:
    files = [path for path in DEPLOY.rglob("*") if path.suffix in {".yaml", ".yml"}]
    for path in [*files, DEPLOY / "Dockerfile"]:
        for line in path.read_text().splitlines():
            if "#" in line:
                for name in REFERENCE.findall(line.split("#", 1)[1]):
                    yield path, name


def test_files_named_in_deploy_comments_exist() -> None:
    found = list(comment_references())
    assert any(name == "README.md" for _, name in found)
    missing = [
        f"{path.relative_to(ROOT)}: {name}"
        for path, name in found
        if not any((base / name).exists() for base in (ROOT, DEPLOY, path.parent))
    ]
    assert not missing


# -- docker compose config ------------------------------------------------------------------------


def compose_command() -> tuple[list[str] | None, str]:
    """The compose CLI to run, or why there is none."""
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, timeout=30
        )
        if probe.returncode == 0:
            return [docker, "compose"], ""
    standalone = shutil.which("docker-compose")
    if standalone is not None:
        probe = subprocess.run(
            [standalone, "version", "--short"], capture_output=True, text=True, timeout=30
        )
        if probe.returncode == 0 and probe.stdout.strip().lstrip("v").startswith("2"):
            return [standalone], ""
    if docker is None:
        reason = "no `docker` binary on PATH"
    else:
        reason = "`docker` has no compose plugin (`docker compose version` fails)"
    if standalone is not None:
        reason += "; the standalone docker-compose is 1.x, older than the Compose Specification"
    return None, reason


def test_docker_compose_config_accepts_the_file() -> None:
    command, reason = compose_command()
    if command is None:
        pytest.skip(f"docker compose config not run: {reason}")
    env = {key: value for key, value in os.environ.items() if key not in {"POSTGRES_PASSWORD"}}
    env.pop("JOBGATE_SUBNET", None)
    args = [*command, "--file", str(COMPOSE), "config", "--format", "json"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, f"{shlex.join(args)}:\n{done.stderr}"
    resolved = json.loads(done.stdout)
    assert set(resolved["services"]) == set(compose()["services"])
    for name in replicas():
        dsn = resolved["services"][name]["environment"]["JOBGATE_STORE__DSN"]
        assert "${" not in dsn
        assert urlsplit(dsn).hostname == "postgres"
