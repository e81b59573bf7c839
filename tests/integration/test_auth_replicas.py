"""Client API keys across two ``jobgate serve`` processes on one PostgreSQL schema (issue 9).

Each replica keeps what it read of a key for at most ``auth.cache_seconds`` (1 s), and forgets it
all as soon as any process revokes a key (the store's ``keys`` NOTIFY). So:

1. a key made by ``jobgate keys create`` (a third process) or by replica A's ``POST /v1/keys``
   works on both replicas; revoked on A (``DELETE /v1/keys/{id}``) or by ``jobgate keys revoke``,
   it is refused by B (401 ``key_revoked``) within a bounded poll, and so is a stream token it
   issued; the other keys keep working. The delays are printed (``pytest -s``);
2. a key whose expiry has passed is refused by both (401 ``key_expired``), and a key that expires
   while both have it cached is accepted until its expiry and refused after it, by both;
3. a replica on PostgreSQL with keys required and no ``JOBGATE_AUTH__SECRET`` does not start: it
   exits non-zero with one line that says what to set.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from adapters.sandboxes import create_sandbox_app
from adapters.simulator import SandboxSettings
from gateway.auth import ApiKey, KeyHasher, Scope, new_key_id, new_key_secret, public_prefix
from gateway.store.postgres import PostgresStore
from gateway.store.postgres.sql import KEYS_CHANNEL, channel
from tests.conftest import Serve
from tests.integration.conftest import FAST_POLICY
from tests.integration.replica_harness import (
    Replica,
    launch,
    replica_config,
    replica_env,
    run_jobgate,
    start_replica,
    stop_replicas,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

AUTH_SECRET = "replica-auth-secret-" + secrets.token_hex(16)
TENANT = "team-a"
REFUSED_WITHIN = 5.0
"""The bound on each poll for a refusal. The design's promise is well under a second (NOTIFY),
and a lost signal costs at most ``auth.cache_seconds`` (1 s); the figure is printed, not
asserted against wall-clock time."""
READY_WITHIN = 60.0
EXPIRES_IN = 2.0
"""The short-lived key's lifetime: long enough for both replicas to accept (and cache) it first."""


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]

    @property
    def code(self) -> str | None:
        code = self.body.get("code")
        return code if isinstance(code, str) else None


@dataclass
class Cluster:
    session: aiohttp.ClientSession
    config: Path
    env: dict[str, str]
    a: Replica
    b: Replica
    schema: str
    dsn: str
    started: list[Replica] = field(default_factory=list)

    async def call(
        self,
        replica: Replica,
        method: str,
        path: str,
        key: str | None,
        body: dict[str, Any] | None = None,
    ) -> Answer:
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        async with self.session.request(
            method,
            replica.url + path,
            json=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=10),
        ) as response:
            text = await response.text()
            parsed = json.loads(text) if text and response.content_type.endswith("json") else {}
            return Answer(response.status, parsed, dict(response.headers))

    async def stream_status(self, replica: Replica, token: str) -> int:
        """The status ``GET /v1/events?access_token=`` answers (a 200 stream is closed at once)."""
        async with self.session.get(
            f"{replica.url}/v1/events",
            params={"access_token": token},
            timeout=aiohttp.ClientTimeout(total=10),
        ) as response:
            return response.status

    async def keys_cli(self, *args: str) -> str:
        """``jobgate keys --config FILE <args>`` as its own process: its standard output."""
        done = await asyncio.to_thread(
            run_jobgate, self.env, "keys", "--config", str(self.config), *args
        )
        assert done.returncode == 0, (done.returncode, done.stderr)
        return done.stdout

    async def create_with_cli(self, *scopes: Scope, **options: str) -> dict[str, Any]:
        extra = [item for name, value in options.items() for item in (f"--{name}", value)]
        out = await self.keys_cli(
            "create", "--tenant", TENANT, "--scopes", ",".join(scopes), "--json", *extra
        )
        created: dict[str, Any] = json.loads(out)
        return created

    async def until_refused(self, replica: Replica, key: str, code: str) -> tuple[float, Answer]:
        """Ask ``replica`` with ``key`` until it refuses with ``code``, for at most
        REFUSED_WITHIN s; when the refusal came back (``time.monotonic()``), and the refusal."""
        started = time.monotonic()
        seen: list[int] = []
        while time.monotonic() - started < REFUSED_WITHIN:
            answer = await self.call(replica, "GET", "/v1/jobs?limit=1", key)
            if answer.status == 401:
                assert answer.code == code, answer
                return time.monotonic(), answer
            assert answer.status == 200, answer
            seen.append(answer.status)
            await asyncio.sleep(0.005)  # a poll, not a timer: the condition is re-checked
        raise AssertionError(
            f"{replica.name} still accepted the key after {REFUSED_WITHIN} s "
            f"({len(seen)} answers of 200)"
        )


@contextlib.asynccontextmanager
async def two_replicas(
    serve: Serve, tmp_path: Path, dsn: str, schema: str
) -> AsyncIterator[Cluster]:
    sandbox_url = await serve(create_sandbox_app(SandboxSettings(speed=400.0, seed=9)))
    config = tmp_path / "auth.toml"
    config.write_text(
        replica_config(
            sandbox_url,
            tick_ms=20,
            lease_seconds=10.0,
            total_timeout=3.0,
            policy=FAST_POLICY,
            pulse_policy=FAST_POLICY,
            heartbeat=2.0,
            auth={"required": True, "cache_seconds": 1.0},
        )
    )
    env = replica_env(dsn, schema, "provider-key", {"JOBGATE_AUTH__SECRET": AUTH_SECRET})
    started: list[Replica] = []
    session = aiohttp.ClientSession()
    try:
        a, b = await asyncio.gather(
            launch(session, started, "replica-a", config, env, "provider-key", within=READY_WITHIN),
            launch(session, started, "replica-b", config, env, "provider-key", within=READY_WITHIN),
        )
        yield Cluster(session, config, env, a, b, schema, dsn, started)
    finally:
        await stop_replicas(started)
        await session.close()


def logs_of(cluster: Cluster) -> str:
    return "\n".join(
        path.read_text(errors="replace")
        for replica in cluster.started
        for path in (replica.log_path, replica.out_path)
    )


async def test_a_key_revoked_on_one_replica_is_refused_by_the_other(
    postgres_dsn: str, pg_schema: str, serve: Serve, tmp_path: Path
) -> None:
    async with two_replicas(serve, tmp_path, postgres_dsn, pg_schema) as cluster:
        a, b = cluster.a, cluster.b
        # Every NOTIFY on the schema's keys channel, heard by a process that is neither replica.
        heard: list[str] = []
        notified = asyncio.Event()

        def on_notify(*args: Any) -> None:  # (connection, pid, channel, payload)
            heard.append(str(args[3]))
            notified.set()

        listener = await asyncpg.connect(postgres_dsn)
        await listener.add_listener(channel(KEYS_CHANNEL, pg_schema), on_notify)
        try:
            admin = await cluster.create_with_cli(Scope.ADMIN, Scope.READ, name="ops")
            by_cli = await cluster.create_with_cli(Scope.READ, Scope.WRITE, name="worker")
            made = await cluster.call(
                a, "POST", "/v1/keys", admin["key"], {"scopes": ["jobs:read"], "name": "web"}
            )
            assert made.status == 201, made
            by_api = made.body
            assert by_api["tenant"] == TENANT
            assert by_api["prefix"] == public_prefix(by_api["key"])

            # Every key works on both replicas (the one made through A is tried on B only below,
            # so that B first reads it from the store then); a stream token made on A works on B.
            for replica in (a, b):
                for key in (admin["key"], by_cli["key"], by_api["key"]):
                    if replica is b and key == by_api["key"]:
                        continue
                    answer = await cluster.call(replica, "GET", "/v1/jobs?limit=1", key)
                    assert answer.status == 200, (replica.name, answer)
            issued = await cluster.call(a, "POST", "/v1/stream-tokens", by_api["key"])
            assert issued.status == 201, issued
            token = issued.body["token"]
            assert await cluster.stream_status(b, token) == 200
            assert await cluster.stream_status(a, token) == 200

            # -- revoked on A through the API: B, which has just read and cached it, refuses it -
            primed_at = time.monotonic()
            primed = await cluster.call(b, "GET", "/v1/jobs?limit=1", by_api["key"])
            assert primed.status == 200, primed
            revoked = await cluster.call(a, "DELETE", f"/v1/keys/{by_api['id']}", admin["key"])
            revoked_at = time.monotonic()
            assert revoked.status == 200, revoked
            assert revoked.body["revoked_at"] is not None
            refused_at, refusal = await cluster.until_refused(b, by_api["key"], "key_revoked")
            assert refusal.headers["WWW-Authenticate"].startswith("Bearer")
            assert "invalid_token" in refusal.headers["WWW-Authenticate"]
            a_refusal = await cluster.call(a, "GET", "/v1/jobs?limit=1", by_api["key"])
            assert (a_refusal.status, a_refusal.code) == (401, "key_revoked")
            # The token it issued dies with it, on both.
            assert await cluster.stream_status(a, token) == 401
            assert await cluster.stream_status(b, token) == 401

            # -- revoked by `jobgate keys revoke` (a third process): both refuse it -----------
            for replica in (a, b):
                primed = await cluster.call(replica, "GET", "/v1/jobs?limit=1", by_cli["key"])
                assert primed.status == 200
            await cluster.keys_cli("revoke", by_cli["id"])
            cli_revoked_at = time.monotonic()
            cli_delays = {
                replica.name: (await cluster.until_refused(replica, by_cli["key"], "key_revoked"))[
                    0
                ]
                - cli_revoked_at
                for replica in (a, b)
            }

            # The others still work; the list shows what happened.
            for replica in (a, b):
                answer = await cluster.call(replica, "GET", "/v1/keys", admin["key"])
                assert answer.status == 200, answer
                listed = {key["id"]: key for key in answer.body["keys"]}
                assert listed[by_api["id"]]["revoked_at"] is not None
                assert listed[by_cli["id"]]["revoked_at"] is not None
                assert listed[admin["id"]]["revoked_at"] is None
                assert all("key" not in key and "digest" not in key for key in listed.values())

            # Each revocation was a NOTIFY another process could hear.
            async with asyncio.timeout(REFUSED_WITHIN):
                while not {by_api["id"], by_cli["id"]} <= set(heard):
                    notified.clear()
                    await notified.wait()
        finally:
            await listener.close()

        # B's cache entry was made no earlier than ``primed_at``: a refusal before it could
        # expire (auth.cache_seconds, 1 s) came from the signal. A figure, not an assertion.
        fresh = refused_at - primed_at < 1.0
        print(
            f"\nrevocation: DELETE answered on {a.name} -> 401 on {b.name} "
            f"{(refused_at - revoked_at) * 1000:.1f} ms later (B's cached entry was "
            f"{(refused_at - primed_at) * 1000:.1f} ms old at most: "
            f"{'dropped by the keys signal' if fresh else 'old enough to have expired'}); "
            "`jobgate keys revoke` exited -> 401 "
            + ", ".join(
                f"on {name} {delay * 1000:.1f} ms later" for name, delay in cli_delays.items()
            )
        )
        logs = logs_of(cluster)
        for key in (admin["key"], by_cli["key"], by_api["key"]):
            assert key not in logs
            assert key[: len(public_prefix(key)) + 1] not in logs
        assert public_prefix(by_api["key"]) in logs  # the refusals were logged, by prefix


async def test_expired_keys_are_refused_by_both_replicas(
    postgres_dsn: str, pg_schema: str, serve: Serve, tmp_path: Path
) -> None:
    async with two_replicas(serve, tmp_path, postgres_dsn, pg_schema) as cluster:
        a, b = cluster.a, cluster.b
        hasher = KeyHasher(AUTH_SECRET.encode())
        store = PostgresStore(postgres_dsn, schema=pg_schema)
        await store.open()

        async def key_expiring(at: datetime) -> str:
            """A key written to the store directly, expiring at ``at`` exactly."""
            plaintext = new_key_secret()
            await store.create_api_key(
                ApiKey(
                    id=new_key_id(),
                    tenant=TENANT,
                    scopes=frozenset({Scope.READ}),
                    digest=hasher.digest(plaintext),
                    prefix=public_prefix(plaintext),
                    name="expiring",
                    created_at=at - timedelta(hours=2),
                    expires_at=at,
                )
            )
            return plaintext

        try:
            # Expired an hour ago: refused by both, whatever either has cached.
            stale = await key_expiring(datetime.now(UTC) - timedelta(hours=1))
            for replica in (a, b):
                answer = await cluster.call(replica, "GET", "/v1/jobs?limit=1", stale)
                assert (answer.status, answer.code) == (401, "key_expired"), answer

            # Expiring in EXPIRES_IN s: accepted by both until then (and cached by both), refused by
            # both after. A request answered before the expiry must pass; one sent after it
            # must fail; one in flight across it may do either.
            expires_at = datetime.now(UTC) + timedelta(seconds=EXPIRES_IN)
            soon = await key_expiring(expires_at)
            answered: dict[str, list[int]] = {a.name: [], b.name: []}
            refused_after: dict[str, float] = {}
            async with asyncio.timeout(EXPIRES_IN + REFUSED_WITHIN):
                while len(refused_after) < 2:
                    for replica in (a, b):
                        if replica.name in refused_after:
                            continue
                        sent = datetime.now(UTC)
                        answer = await cluster.call(replica, "GET", "/v1/jobs?limit=1", soon)
                        back = datetime.now(UTC)
                        answered[replica.name].append(answer.status)
                        if back < expires_at:
                            assert answer.status == 200, (replica.name, answer)
                        elif sent >= expires_at:
                            assert (answer.status, answer.code) == (401, "key_expired"), answer
                        if answer.status == 401:
                            assert answer.code == "key_expired", answer
                            refused_after[replica.name] = (back - expires_at).total_seconds()
                    await asyncio.sleep(0.01)
            # The premise: each replica accepted the key before it expired.
            assert all(statuses[0] == 200 for statuses in answered.values()), answered
        finally:
            await store.close()
        print(
            "\nexpiry: refused "
            + ", ".join(f"{name} {late * 1000:.0f} ms" for name, late in refused_after.items())
            + " after expires_at (the poll's granularity included)"
        )


async def test_a_replica_without_the_auth_secret_does_not_start(
    postgres_dsn: str, pg_schema: str, serve: Serve, tmp_path: Path
) -> None:
    sandbox_url = await serve(create_sandbox_app(SandboxSettings(speed=400.0, seed=9)))
    config = tmp_path / "no-secret.toml"
    config.write_text(
        replica_config(
            sandbox_url,
            tick_ms=20,
            lease_seconds=10.0,
            total_timeout=3.0,
            policy=FAST_POLICY,
            pulse_policy=FAST_POLICY,
            heartbeat=2.0,
            auth={"required": True},
        )
    )
    env = replica_env(postgres_dsn, pg_schema, "provider-key")
    assert not any(name.startswith("JOBGATE_AUTH") for name in env)
    replica = start_replica("no-secret", config, env, "provider-key")
    try:
        code = await asyncio.to_thread(replica.process.wait, READY_WITHIN)
    finally:
        await stop_replicas([replica])
    stderr = replica.log_path.read_text(errors="replace")
    stdout = replica.out_path.read_text(errors="replace")
    assert code != 0, (code, stderr)
    assert "Traceback" not in stderr, stderr
    assert "serving on" not in stdout, stdout
    # Log lines (JSON) may come first, none of them an error (an unclosed session, say); what
    # is said to the operator is one plain line.
    logged = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert [e for e in logged if e.get("level") in ("error", "critical")] == [], stderr
    plain = [line for line in stderr.splitlines() if line.strip() and not line.startswith("{")]
    assert len(plain) == 1, stderr
    assert plain[0].startswith("jobgate: "), plain
    assert "JOBGATE_AUTH__SECRET" in plain[0], plain
