"""Configuration: one root settings object with nested sections.

Sources, strongest first: ``JOBGATE_...`` environment variables (nested with ``__``, e.g.
``JOBGATE_PROVIDERS__PULSE__API_KEY``), then the TOML file named by ``--config`` or
``JOBGATE_CONFIG``, then ``config/sandbox.toml`` (the embedded default), then the defaults here.
Provider keys come from the environment or from a file (``api_key_file``); a key written into a
config file in the repository is refused at load time.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import secrets
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from adapters.http import Timeouts
from gateway.auth import DEFAULT_TENANT, TENANT_PATTERN, ApiKey, Scope
from gateway.limits import TenantLimits
from gateway.policy import PollPolicy
from gateway.results import STANDARD_PORTS
from gateway.vault import CapturePolicy

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "config" / "sandbox.toml"


Port = Annotated[int, Field(ge=1, le=65535)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PolicySettings(_Section):
    first_delay: float = Field(5.0, gt=0)
    min_interval: float = Field(5.0, gt=0)
    max_interval: float = Field(60.0, gt=0)
    multiplier: float = Field(1.5, ge=1)
    jitter: float = Field(1.0, ge=0, le=1)
    deadline: float = Field(24 * 3600.0, gt=0)
    error_max_interval: float = Field(300.0, gt=0)
    not_found_limit: int = Field(3, ge=1)
    concurrency: int = Field(16, ge=1)
    rate_per_second: float = Field(20.0, gt=0)
    burst: int = Field(20, ge=1)
    breaker_threshold: int = Field(5, ge=1)
    breaker_cooldown: float = Field(30.0, gt=0)
    eta_aware: bool = True
    learn: bool = True
    """Schedule polls by the durations learned from this provider's finished jobs."""
    target_lag: float | None = Field(None, gt=0)
    """The mean detection lag the learned schedule aims at (seconds); unset: ``min_interval``."""
    max_wait: float | None = Field(None, gt=0)
    """The longest wait of the learned schedule; unset: 10 x ``max_interval``."""
    min_jobs: int = Field(20, ge=1)
    """Finished jobs (of one cadence key) before the learned schedule replaces the guidance."""
    half_life_jobs: float = Field(200.0, gt=0)
    """Finished jobs after which a learned duration weighs half (how fast drift is followed)."""

    def to_policy(self) -> PollPolicy:
        return PollPolicy(**self.model_dump())


class ResultSettings(_Section):
    """The vault, for one provider's results (``providers.NAME.results``)."""

    capture: bool = True
    """Capture each finished result once and serve it from jobgate's copy. Off: every read goes
    to the provider, and a result the provider forgets is gone (the job becomes ``expired``)."""
    max_bytes: int = Field(1024**3, ge=1024)
    """The largest result captured (and streamed through); a larger one stays upstream."""
    retention_hours: float = Field(168.0, ge=0)
    """How long a copy is kept after its capture (7 days); 0 keeps it while the job exists."""
    redirect: bool = False
    """Leave pointers that need no provider key (presigned URLs) with the provider: not captured,
    and ``?redirect=true`` answers 307 to them."""
    inline_threshold: int = Field(64 * 1024, ge=0)
    """Inline results up to this many bytes stay in the job's row; larger ones move to a file."""

    def to_policy(self) -> CapturePolicy:
        retention = timedelta(hours=self.retention_hours) if self.retention_hours else None
        return CapturePolicy(
            capture=self.capture,
            max_bytes=self.max_bytes,
            retention=retention,
            redirect=self.redirect,
            inline_threshold=self.inline_threshold,
        )


class VaultSettings(_Section):
    path: Path | None = None
    """Where captured results are kept. Unset: ``results/`` beside the SQLite file, or
    ``var/results`` with PostgreSQL. Replicas must share it (a ReadWriteMany volume): a copy
    captured by one is served by all."""
    capture_wait_seconds: float = Field(30.0, gt=0)
    """How long a read waits for a capture under way elsewhere before answering 409."""


class ProviderSettings(_Section):
    enabled: bool = True
    base_url: str
    api_key: SecretStr | None = None
    api_key_file: Path | None = None
    connect_timeout: float = Field(5.0, gt=0)
    read_timeout: float = Field(30.0, gt=0)
    total_timeout: float = Field(60.0, gt=0)
    result_hosts: list[str] = Field(default_factory=list)
    """Hosts that large-result pointers may name (the provider's own host is always allowed)."""
    result_networks: list[str] = Field(default_factory=list)
    """Address ranges that pointers may resolve to although private (the sandbox: 127.0.0.1/32)."""
    result_ports: list[Port] = Field(default_factory=list)
    """Ports pointers may name besides 80, 443 and the ``base_url``'s own (always allowed)."""
    callback_secret: SecretStr | None = None
    policy: PolicySettings = PolicySettings()
    results: ResultSettings = ResultSettings()

    @field_validator("result_networks")
    @classmethod
    def _networks_parse(cls, value: list[str]) -> list[str]:
        for item in value:
            ipaddress.ip_network(item, strict=False)
        return value

    def timeouts(self) -> Timeouts:
        return Timeouts(self.connect_timeout, self.read_timeout, self.total_timeout)

    def pointer_ports(self) -> frozenset[int]:
        """Every port a large-result pointer may name. The API's own port is in because a
        provider serving results beside its API (the sandbox on 8700) is already trusted there."""
        own = urlsplit(self.base_url).port
        return frozenset({*STANDARD_PORTS, *self.result_ports, *([own] if own else [])})

    def key(self) -> str | None:
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.api_key_file is not None:
            return self.api_key_file.read_text().strip()
        return None


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    public_base_url: str | None = None
    """Where providers can reach this gateway (extract's ``callbackUrl``); none disables pushes."""
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    cors_origins: list[str] = Field(default_factory=list)
    """Browser origins allowed by CORS, matched exactly (``https://app.example.com``); ``*`` any."""
    max_wait_seconds: float = Field(60.0, gt=0)
    sse_heartbeat_seconds: float = Field(15.0, gt=0)
    """An idle SSE stream gets a ``: keep-alive`` comment this often (proxies drop silent ones)."""
    max_json_depth: int = Field(64, ge=2, le=200)
    """How deeply a request body may nest (the body itself is level 1). Capped at 200: the JSON
    encoder that forwards ``request`` upstream and stores it stops at about 250 levels."""
    header_timeout_seconds: float = Field(10.0, gt=0)
    """A new connection that has not sent a complete request head by then is closed (slow-loris)."""
    body_timeout_seconds: float = Field(30.0, gt=0)
    """A request body that has not arrived whole by then is refused (408) and its connection
    closed: the head deadline alone would let a client hold a request by dribbling its body."""
    keepalive_timeout_seconds: float = Field(75.0, gt=0)
    """An idle connection between requests is closed after this, and so is one whose next request
    head is still incomplete. Above the 60 s idle timeout of common load balancers, so that they
    close first and never send on a connection the gateway is closing."""
    job_cache_size: int = Field(10_000, ge=1)
    """Jobs whose encoded public form is kept in memory for reads (least recently read go first;
    about 1-2 KiB each). A read of a cached job touches no database."""


class StoreSettings(_Section):
    kind: Literal["sqlite", "postgres", "memory"] = "sqlite"
    """``sqlite`` (one process, the embedded default), ``postgres`` (replicas) or ``memory``
    (tests only)."""
    path: Path = Path("var/jobgate.db")
    dsn: SecretStr | None = None
    """PostgreSQL's ``postgresql://user:password@host:port/db``: from ``JOBGATE_STORE__DSN``."""
    dsn_file: Path | None = None
    """A file holding the DSN (a mounted secret), instead of ``dsn``."""
    schema_: str = Field("public", alias="schema", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
    """The PostgreSQL schema jobgate's tables live in."""
    pool_size: int = Field(10, ge=1, le=200)
    idempotency_ttl_hours: float = Field(24.0, ge=24.0)
    idempotency_lease_seconds: float = Field(120.0, gt=0)
    """How long a request holds its Idempotency-Key before a retry may take it over and recover
    what the request left (a crashed process's keys): longer than any provider call can take."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _postgres_has_a_dsn(self) -> Self:
        if self.kind == "postgres" and self.dsn is None and self.dsn_file is None:
            raise ValueError(
                "store.kind = 'postgres' needs a DSN: set JOBGATE_STORE__DSN or store.dsn_file"
            )
        return self

    def postgres_dsn(self) -> str:
        if self.dsn is not None:
            return self.dsn.get_secret_value()
        assert self.dsn_file is not None
        return self.dsn_file.read_text().strip()


class RunnerSettings(_Section):
    tick_ms: int = Field(20, ge=1, le=1000)
    """Due work is coalesced into ticks; state changes are written once per tick."""
    batch: int = Field(500, ge=1)
    lease_seconds: float = Field(120.0, gt=0)
    """How long a claimed poll holds its job. After a crash, a job whose poll was in flight is
    polled again when its lease ends; keep it just above the providers' ``total_timeout``."""
    enabled: bool = True


class SandboxSettingsModel(_Section):
    embedded: bool = False
    """Serve the four provider sandboxes inside the gateway process (``make run``)."""
    host: str = "127.0.0.1"
    port: int = Field(8700, ge=0, le=65535)
    speed: float = Field(24.0, gt=0)
    faults: float = Field(0.0, ge=0, le=1)
    seed: int | None = None


WebhookEvent = Literal["terminal", "progress"]


def _terminal_only() -> list[WebhookEvent]:
    return ["terminal"]


class WebhookEndpointSettings(_Section):
    url: str
    events: list[WebhookEvent] = Field(default_factory=_terminal_only)
    """``["terminal"]``: finished jobs; ``["terminal", "progress"]``: every change as well."""
    tenants: list[Annotated[str, Field(pattern=TENANT_PATTERN)]] | None = None
    """Only these tenants' jobs (a team's own endpoint); unset: every tenant's."""

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        # ``.port`` raises for a port out of range: the endpoint's port joins the allowed ones, so
        # a bad one is refused when the settings load, not when the webhooks start.
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.port == 0:
            raise ValueError("a webhook endpoint must be an absolute http or https URL")
        return value

    @field_validator("events")
    @classmethod
    def _terminal_included(cls, value: list[WebhookEvent]) -> list[WebhookEvent]:
        if "terminal" not in value:
            raise ValueError('events must include "terminal" (and may add "progress")')
        return value


class WebhookSettings(_Section):
    secret: SecretStr | None = None
    """Standard Webhooks signing secret, ``whsec_`` + base64 of 24-64 bytes. Unset with the
    embedded sandbox: a random one per process. Unset otherwise: no webhooks are sent."""
    endpoints: list[WebhookEndpointSettings] = Field(default_factory=list)
    schedule: list[float] = Field(
        default_factory=lambda: [0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0],
        min_length=1,
        max_length=50,
    )
    """Seconds before each attempt: the first after the event, each later one after the failure
    before it. One attempt per entry."""
    timeout: float = Field(15.0, gt=0)
    concurrency: int = Field(16, ge=1)
    allowed_hosts: list[str] = Field(default_factory=list)
    """Hosts a job's ``callback_url`` may name (``*.example.com`` patterns too); the configured
    endpoints' own hosts are always allowed."""
    allowed_networks: list[str] = Field(default_factory=list)
    """Private ranges a webhook target may resolve to (tests: ``127.0.0.1/32``)."""
    allowed_ports: list[Port] = Field(default_factory=list)
    """Ports a webhook target (a ``callback_url`` too) may name besides 80 and 443; the configured
    endpoints' own ports are always allowed."""
    retention_hours: float = Field(168.0, gt=0)
    """Finished deliveries are kept this long (pending ones until they finish)."""

    @field_validator("secret")
    @classmethod
    def _secret_decodes(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            raw = value.get_secret_value().removeprefix("whsec_")
            try:
                size = len(base64.b64decode(raw, validate=True))
            except binascii.Error:
                raise ValueError("webhooks.secret must be whsec_ followed by base64") from None
            if not 24 <= size <= 64:
                raise ValueError("webhooks.secret must encode 24 to 64 bytes")
        return value

    @field_validator("schedule")
    @classmethod
    def _delays_non_negative(cls, value: list[float]) -> list[float]:
        if any(delay < 0 for delay in value):
            raise ValueError("schedule delays must be >= 0")
        return value

    @field_validator("allowed_networks")
    @classmethod
    def _networks_parse(cls, value: list[str]) -> list[str]:
        for item in value:
            ipaddress.ip_network(item, strict=False)
        return value


Tenant = Annotated[str, Field(pattern=TENANT_PATTERN)]


class ConfiguredKeySettings(_Section):
    """A key defined by its hash, for GitOps: the plaintext never enters a file. The digest is
    what ``jobgate keys hash`` prints for a key (it needs the same ``auth.secret``)."""

    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    tenant: Tenant
    scopes: list[Scope] = Field(min_length=1)
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    name: str = Field("", max_length=200)
    prefix: str = Field("", max_length=16)
    """The key's public prefix (``jg_`` and 8 characters), shown in lists and logs."""
    expires_at: datetime | None = None

    def to_key(self) -> ApiKey:
        return ApiKey(
            id=self.id,
            tenant=self.tenant,
            scopes=frozenset(self.scopes),
            digest=self.digest,
            prefix=self.prefix,
            name=self.name,
            created_at=datetime(1970, 1, 1, tzinfo=UTC),
            expires_at=self.expires_at,
            source="config",
        )


class AuthSettings(_Section):
    required: bool | None = None
    """Client API keys on every route but health, metrics and the OpenAPI document. Unset: on,
    except in the embedded sandbox profile (``make run``) on a loopback address. Off on any
    other address refuses to start."""
    secret: SecretStr | None = None
    """Keys are stored as HMAC-SHA-256 under this secret, which also signs stream tokens: from
    ``JOBGATE_AUTH__SECRET`` or ``auth.secret_file``, at least 32 characters, the same on every
    replica. Unset with SQLite: made once and kept beside the database (``auth.secret``)."""
    secret_file: Path | None = None
    keys: list[ConfiguredKeySettings] = Field(default_factory=list)
    cache_seconds: float = Field(1.0, ge=0, le=1)
    """How long a replica trusts what it read of a key. Revocation is signalled to every replica
    at once; this bounds the delay when a signal is lost."""
    stream_token_seconds: float = Field(300.0, gt=0, le=3600)
    """The lifetime of a ``POST /v1/stream-tokens`` token (checked when a stream connects)."""
    public_metrics: bool = True
    """``GET /metrics`` without a key (scrapers); false: it needs an ``admin`` key."""

    @field_validator("keys")
    @classmethod
    def _unique_ids(cls, value: list[ConfiguredKeySettings]) -> list[ConfiguredKeySettings]:
        ids = [key.id for key in value]
        if len(ids) != len(set(ids)):
            raise ValueError("auth.keys ids must be unique")
        return value

    def secret_value(self) -> str | None:
        if self.secret is not None:
            return self.secret.get_secret_value()
        if self.secret_file is not None:
            return self.secret_file.read_text().strip()
        return None


class TenantLimitSettings(_Section):
    max_active_jobs: int | None = Field(None, ge=1)
    """Queued and running jobs a tenant may hold; a submit or adopt beyond it is 429."""
    submits_per_minute: int | None = Field(None, ge=1)
    """Jobs a tenant may create in any 60 s window, across replicas."""


class LimitSettings(TenantLimitSettings):
    """Per-tenant limits: these for every tenant, overridden per tenant in ``tenants``."""

    tenants: dict[Tenant, TenantLimitSettings] = Field(default_factory=dict)

    def of(self, tenant: str) -> TenantLimits:
        named = self.tenants.get(tenant) or TenantLimitSettings()
        return TenantLimits(
            max_active_jobs=named.max_active_jobs or self.max_active_jobs,
            submits_per_minute=named.submits_per_minute or self.submits_per_minute,
        )


AccessLog = Literal["all", "reads", "off"]


class LogSettings(_Section):
    format: Literal["json", "console"] = "console"
    level: str = "INFO"
    access: AccessLog = "reads"
    """Which requests get an ``http.request`` line: ``all``; ``reads`` (the default): all but
    successful reads (GET, HEAD, OPTIONS below 400) quicker than ``slow_request_seconds``; or
    ``off``. The HTTP metrics count every request whatever this says."""
    slow_request_seconds: float = Field(1.0, gt=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="JOBGATE_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    server: ServerSettings = ServerSettings()
    store: StoreSettings = StoreSettings()
    runner: RunnerSettings = RunnerSettings()
    sandbox: SandboxSettingsModel = SandboxSettingsModel()
    log: LogSettings = LogSettings()
    providers: dict[str, ProviderSettings] = Field(default_factory=dict)
    webhooks: WebhookSettings = WebhookSettings()
    auth: AuthSettings = AuthSettings()
    limits: LimitSettings = LimitSettings()
    vault: VaultSettings = VaultSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = _CONFIG_FILE.get() or Path(os.environ.get("JOBGATE_CONFIG", DEFAULT_CONFIG))
        toml = _KeylessToml(settings_cls, toml_file=path)
        return (init_settings, env_settings, toml)

    @model_validator(mode="after")
    def _known_providers(self) -> Self:
        from adapters.registry import PROVIDERS

        unknown = sorted(set(self.providers) - set(PROVIDERS))
        if unknown:
            raise ValueError(f"unknown providers in configuration: {', '.join(unknown)}")
        return self

    @model_validator(mode="after")
    def _lease_outlasts_a_poll(self) -> Self:
        # A claimed job is not claimed again until its lease ends; a lease shorter than a status
        # call would let a second poll of the same job start while the first is still out.
        for name, provider in self.providers.items():
            if provider.total_timeout >= self.runner.lease_seconds:
                raise ValueError(
                    f"runner.lease_seconds ({self.runner.lease_seconds:g}) must exceed "
                    f"providers.{name}.total_timeout ({provider.total_timeout:g})"
                )
        return self

    @model_validator(mode="after")
    def _key_lease_outlasts_a_call(self) -> Self:
        # A live holder must never be taken over: its call and a retry's could both create a job.
        lease = self.store.idempotency_lease_seconds
        for name, provider in self.providers.items():
            if provider.total_timeout >= lease:
                raise ValueError(
                    f"store.idempotency_lease_seconds ({lease:g}) must exceed "
                    f"providers.{name}.total_timeout ({provider.total_timeout:g})"
                )
        return self

    @model_validator(mode="after")
    def _signing_secrets_are_whsec(self) -> Self:
        # Checked as the settings load, so `jobgate serve` refuses with one line, not a traceback.
        from gateway.callbacks import SIGNED  # callbacks reads settings: import late
        from gateway.signatures import secret_problem

        for name in sorted(SIGNED & self.providers.keys()):
            configured = self.providers[name].callback_secret
            if configured is None or not configured.get_secret_value():
                continue
            problem = secret_problem(configured.get_secret_value())
            if problem is not None:
                raise ValueError(
                    f"providers.{name}.callback_secret (JOBGATE_PROVIDERS__{name.upper()}__"
                    "CALLBACK_SECRET) must be the endpoint's Standard Webhooks signing secret, "
                    f"whsec_ followed by base64, as the provider's portal shows it: {problem}"
                )
        return self

    @model_validator(mode="after")
    def _webhooks_signable(self) -> Self:
        if self.webhooks.endpoints and self.webhooks.secret is None and not self.sandbox.embedded:
            raise ValueError(
                "webhooks.endpoints need webhooks.secret (or JOBGATE_WEBHOOKS__SECRET) to sign with"
            )
        return self

    @model_validator(mode="after")
    def _open_only_on_loopback(self) -> Self:
        if not self.auth_required() and not is_loopback(self.server.host):
            raise ValueError(
                f"server.host is {self.server.host}, reachable from other machines, and auth is "
                "off: set JOBGATE_AUTH__REQUIRED=true and create keys with `jobgate keys create`"
            )
        return self

    def vault_path(self) -> Path:
        if self.vault.path is not None:
            return self.vault.path
        if self.store.kind == "sqlite":
            return self.store.path.parent / "results"
        return Path("var/results")

    def auth_required(self) -> bool:
        """Whether callers need keys: as set, else on except for ``make run``'s profile."""
        if self.auth.required is not None:
            return self.auth.required
        return not (self.sandbox.embedded and is_loopback(self.server.host))

    def known_tenants(self) -> frozenset[str]:
        """Tenants the configuration names: the only ones a metric label may carry (a tenant
        made on the fly by ``jobgate keys create`` is counted as ``other``)."""
        return frozenset(
            {DEFAULT_TENANT, *self.limits.tenants, *(key.tenant for key in self.auth.keys)}
        )

    def provider_key(self, name: str) -> str:
        """The provider's key; the embedded sandbox accepts any, so it gets a throwaway one."""
        key = self.providers[name].key()
        if key:
            return key
        if self.sandbox.embedded:
            return _SANDBOX_KEY
        raise ValueError(
            f"no API key for provider {name!r}: set JOBGATE_PROVIDERS__{name.upper()}__API_KEY "
            f"or providers.{name}.api_key_file"
        )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_CONFIG_FILE: ContextVar[Path | None] = ContextVar("jobgate_config_file", default=None)
_SANDBOX_KEY = "sandbox-" + secrets.token_hex(8)


class _KeylessToml(TomlConfigSettingsSource):
    """The TOML source, refusing provider keys written into the file itself."""

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()
        store = data.get("store")
        if isinstance(store, dict) and store.get("dsn"):
            raise ValueError(
                "store.dsn is set in a config file; the DSN carries a password and comes from the "
                "environment (JOBGATE_STORE__DSN) or store.dsn_file"
            )
        auth = data.get("auth")
        if isinstance(auth, dict) and auth.get("secret"):
            raise ValueError(
                "auth.secret is set in a config file; it comes from the environment "
                "(JOBGATE_AUTH__SECRET) or auth.secret_file"
            )
        for name, provider in (data.get("providers") or {}).items():
            for secret in ("api_key", "callback_secret"):
                if isinstance(provider, dict) and provider.get(secret):
                    raise ValueError(
                        f"providers.{name}.{secret} is set in a config file; secrets come from "
                        f"the environment (JOBGATE_PROVIDERS__{name.upper()}__{secret.upper()})"
                    )
        return data


def load_settings(config: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from ``config`` (or the default chain) with keyword overrides on top."""
    token = _CONFIG_FILE.set(Path(config) if config is not None else None)
    try:
        return Settings(**overrides)
    finally:
        _CONFIG_FILE.reset(token)
