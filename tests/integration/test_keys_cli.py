"""``jobgate keys create|list|revoke|hash`` as an operator runs them: against a temporary SQLite
configuration, before and while a gateway (a real ``jobgate serve`` process) serves the same file.

The key alone goes to standard output, so ``KEY=$(jobgate keys create ...)`` captures it; a
revocation reaches the running gateway within its cache time (at most 1 s); ``keys hash`` prints the
digest that ``auth.keys`` accepts, so a key defined in a configuration file authenticates."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from gateway.auth import KeyHasher, looks_like_key, new_key_secret
from tests.support import free_port

pytestmark = pytest.mark.integration

JOBGATE = str(Path(sys.executable).parent / "jobgate")
PROVIDER_KEY = "provider-key-for-the-keys-cli-tests"


@dataclass
class Ran:
    code: int
    out: str
    err: str


def environment() -> dict[str, str]:
    """This process's environment without any JOBGATE_ setting that could change the outcome."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("JOBGATE_")}
    env["JOBGATE_PROVIDERS__PULSE__API_KEY"] = PROVIDER_KEY
    return env


def write_config(tmp_path: Path, extra: str = "") -> Path:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[store]\npath = "{tmp_path / "jobs.db"}"\n'
        "[sandbox]\nembedded = false\n"
        '[providers.pulse]\nbase_url = "http://127.0.0.1:9/pulse"\n'
        "[auth]\nrequired = true\n" + extra
    )
    return config


async def keys(config: Path, *args: str, stdin: str | None = None) -> Ran:
    process = await asyncio.create_subprocess_exec(
        JOBGATE,
        "keys",
        "--config",
        str(config),
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environment(),
    )
    try:
        async with asyncio.timeout(60):
            out, err = await process.communicate(stdin.encode() if stdin is not None else None)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode())


@dataclass
class Gateway:
    url: str
    process: asyncio.subprocess.Process
    output: str = ""


@asynccontextmanager
async def serving(config: Path, session: aiohttp.ClientSession) -> AsyncIterator[Gateway]:
    """``jobgate serve`` on a free port, ready (``/healthz``) when entered; its output is in
    ``output`` once the block is left."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        JOBGATE,
        "serve",
        "--config",
        str(config),
        "--port",
        str(port),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=environment(),
    )
    gateway = Gateway(f"http://127.0.0.1:{port}", process)
    try:
        for _ in range(300):  # bounded: about 30 s
            if process.returncode is not None:
                break
            try:
                async with session.get(f"{gateway.url}/healthz") as response:
                    if response.status == 200:
                        break
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the gateway did not start")
        assert process.returncode is None, "the gateway exited"
        yield gateway
    finally:
        if process.returncode is None:
            process.terminate()
        assert process.stdout is not None
        async with asyncio.timeout(30):
            gateway.output = (await process.stdout.read()).decode()
            await process.wait()


async def status_of(session: aiohttp.ClientSession, gateway: Gateway, key: str) -> tuple[int, str]:
    async with session.get(
        f"{gateway.url}/v1/jobs", headers={"Authorization": f"Bearer {key}"}
    ) as response:
        body = await response.json(content_type=None)
        return response.status, body.get("code", "")


def digest_for(tmp_path: Path, key: str) -> str:
    """What the gateway stores for ``key``: its HMAC under the secret kept beside the database."""
    secret = (tmp_path / "auth.secret").read_text().strip().encode()
    return KeyHasher(secret).digest(key)


# -- create and list ---------------------------------------------------------------------------


async def test_create_prints_only_the_key_and_list_never_shows_it(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    created = await keys(
        config, "create", "--tenant", "team-a", "--scopes", "jobs:read", "--name", "reader"
    )
    assert created.code == 0, created.err
    assert created.out.endswith("\n")
    key = created.out.strip()
    assert created.out == key + "\n"  # one line, the key alone
    assert looks_like_key(key)
    found = re.search(r"created (key_[0-9a-f]+) for tenant team-a \(jobs:read\)", created.err)
    assert found, created.err
    key_id = found[1]
    assert key not in created.err
    assert "only this once" in created.err
    # The secret was made beside the database, owner-only.
    assert (tmp_path / "auth.secret").stat().st_mode & 0o777 == 0o600
    digest = digest_for(tmp_path, key)

    listing = await keys(config, "list")
    assert listing.code == 0, listing.err
    header, *rows = listing.out.splitlines()
    assert header.split()[:4] == ["ID", "TENANT", "NAME", "PREFIX"]
    assert len(rows) == 1
    assert rows[0].split()[:4] == [key_id, "team-a", "reader", key[:11]]
    as_json = await keys(config, "list", "--json")
    assert as_json.code == 0, as_json.err
    records = [json.loads(line) for line in as_json.out.splitlines()]
    assert [(r["id"], r["tenant"], r["prefix"], r["scopes"]) for r in records] == [
        (key_id, "team-a", key[:11], ["jobs:read"])
    ]
    assert "key" not in records[0]
    assert "digest" not in records[0]
    for shown in (listing, as_json):
        assert key not in shown.out + shown.err
        assert key[11:] not in shown.out + shown.err
        assert digest not in shown.out + shown.err

    # Another tenant's key; --tenant filters, and --json on create gives the record and the key.
    other = await keys(
        config, "create", "--tenant", "team-b", "--scopes", "jobs:read,jobs:write", "--json"
    )
    assert other.code == 0, other.err
    record = json.loads(other.out)
    assert looks_like_key(record["key"])
    assert record["tenant"] == "team-b"
    assert record["scopes"] == ["jobs:read", "jobs:write"]
    assert "digest" not in record
    only_a = await keys(config, "list", "--tenant", "team-a", "--json")
    assert [json.loads(line)["id"] for line in only_a.out.splitlines()] == [key_id]
    everyone = await keys(config, "list", "--json")
    assert len(everyone.out.splitlines()) == 2


async def test_create_with_an_expiry(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    created = await keys(
        config, "create", "--tenant", "t", "--scopes", "admin", "--expires", "90d", "--json"
    )
    assert created.code == 0, created.err
    record = json.loads(created.out)
    assert record["expires_at"] is not None
    assert record["expires_at"] > record["created_at"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("--tenant", "t", "--scopes", "jobs:delete"), 2, "unknown scope 'jobs:delete'"),
        (("--tenant", "t", "--scopes", ","), 2, "at least one scope"),
        (("--tenant", "t", "--scopes", "admin", "--expires", "0d"), 2, "longer than zero"),
        (("--tenant", "t", "--scopes", "admin", "--expires", "soon"), 2, "a duration"),
        (("--tenant", "Team A", "--scopes", "admin"), 1, "tenant must be"),
    ],
)
async def test_create_refusals_are_one_line_and_print_no_key(
    tmp_path: Path, args: tuple[str, ...], code: int, message: str
) -> None:
    ran = await keys(write_config(tmp_path), "create", *args)
    assert ran.code == code, ran.err
    assert ran.out == ""
    lines = ran.err.strip().splitlines()
    assert len(lines) == 1, ran.err
    assert lines[0].startswith("jobgate keys: ")
    assert message in lines[0]
    assert "Traceback" not in ran.err


async def test_revoke_of_an_unknown_key_and_a_memory_store_are_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    unknown = await keys(config, "revoke", "key_0000000000000000")
    assert unknown.code == 1
    assert unknown.err.strip() == (
        "jobgate keys: key_not_found: no usable key with the id key_0000000000000000"
    )
    memory = tmp_path / "memory.toml"
    memory.write_text(
        '[store]\nkind = "memory"\n[sandbox]\nembedded = false\n'
        '[providers.pulse]\nbase_url = "http://127.0.0.1:9/pulse"\n'
    )
    ran = await keys(memory, "list")
    assert ran.code == 2
    assert "store.kind is memory" in ran.err
    assert "/v1/keys" in ran.err


# -- while the gateway serves --------------------------------------------------------------------


async def test_keys_made_and_revoked_while_the_gateway_serves_the_same_file(
    tmp_path: Path, http_session: aiohttp.ClientSession
) -> None:
    config = write_config(tmp_path)
    before = await keys(config, "create", "--tenant", "team-a", "--scopes", "jobs:read")
    assert before.code == 0, before.err
    key = before.out.strip()
    key_id = re.search(r"created (key_[0-9a-f]+)", before.err)[1]  # type: ignore[index]
    async with serving(config, http_session) as gateway:
        assert await status_of(http_session, gateway, key) == (200, "")
        # Without a key, or with another, it is refused: auth really is on.
        assert (await status_of(http_session, gateway, new_key_secret()))[0] == 401
        # A key made while it serves works at once.
        during = await keys(config, "create", "--tenant", "team-b", "--scopes", "jobs:read")
        assert during.code == 0, during.err
        second = during.out.strip()
        assert await status_of(http_session, gateway, second) == (200, "")

        revoked = await keys(config, "revoke", key_id)
        assert revoked.code == 0, revoked.err
        assert f"revoked {key_id} (tenant team-a, {key[:11]}...)" in revoked.err
        assert revoked.out == ""
        # The gateway's cache holds a key at most auth.cache_seconds (1 s): poll with a bound.
        started = time.monotonic()
        seen: tuple[int, str] = (0, "")
        for _ in range(100):  # bounded: about 5 s
            seen = await status_of(http_session, gateway, key)
            if seen[0] == 401:
                break
            await asyncio.sleep(0.05)
        took = time.monotonic() - started
        assert seen == (401, "key_revoked"), seen
        assert took < 3.0, f"revocation took {took:.2f} s to reach the gateway"
        # For good: and the other key is untouched.
        assert await status_of(http_session, gateway, key) == (401, "key_revoked")
        assert await status_of(http_session, gateway, second) == (200, "")
        listing = await keys(config, "list", "--json")
        states = {r["id"]: r["revoked_at"] for r in map(json.loads, listing.out.splitlines())}
        assert states[key_id] is not None
    # Neither key reached the gateway's output (its logs), past the public prefix.
    assert "serving on" in gateway.output
    assert "API keys required" in gateway.output
    for plaintext in (key, second):
        assert plaintext[11:] not in gateway.output
    assert "key_revoked" in gateway.output  # the refusal is logged, by its reason


async def test_a_hashed_key_in_the_configuration_authenticates(
    tmp_path: Path, http_session: aiohttp.ClientSession
) -> None:
    config = write_config(tmp_path)
    plaintext = new_key_secret()
    hashed = await keys(config, "hash", stdin=plaintext + "\n")
    assert hashed.code == 0, hashed.err
    digest = hashed.out.strip()
    assert hashed.out == digest + "\n"
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert plaintext not in hashed.out + hashed.err
    assert digest == digest_for(tmp_path, plaintext)
    # A second run (the secret already exists) gives the same digest.
    assert (await keys(config, "hash", stdin=plaintext)).out.strip() == digest

    config = write_config(
        tmp_path,
        "[[auth.keys]]\n"
        'id = "ops-dashboard"\ntenant = "ops"\nscopes = ["jobs:read"]\n'
        f'digest = "{digest}"\nprefix = "{plaintext[:11]}"\nname = "from git"\n',
    )
    listing = await keys(config, "list", "--json")
    assert listing.code == 0, listing.err
    records = [json.loads(line) for line in listing.out.splitlines()]
    assert [(r["id"], r["tenant"], r["source"], r["prefix"]) for r in records] == [
        ("ops-dashboard", "ops", "config", plaintext[:11])
    ]
    assert digest not in listing.out
    refused = await keys(config, "revoke", "ops-dashboard")
    assert refused.code == 1
    assert "auth.keys" in refused.err
    assert "remove it there" in refused.err

    async with serving(config, http_session) as gateway:
        assert await status_of(http_session, gateway, plaintext) == (200, "")
        # A digest made under another secret is worth nothing.
        forged = plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B")
        assert await status_of(http_session, gateway, forged) == (401, "invalid_key")
        async with http_session.post(
            f"{gateway.url}/v1/jobs",
            json={"provider": "pulse", "request": {"fileUrl": "https://example.com/a.pdf"}},
            headers={"Authorization": f"Bearer {plaintext}"},
        ) as response:
            assert response.status == 403  # jobs:read only
            assert (await response.json(content_type=None))["code"] == "insufficient_scope"
    assert plaintext[11:] not in gateway.output


@pytest.mark.parametrize("stdin", ["", "not a key\n", "jg_short\n", "Bearer jg_" + "a" * 43])
async def test_hash_refuses_what_is_not_a_key(tmp_path: Path, stdin: str) -> None:
    ran = await keys(write_config(tmp_path), "hash", stdin=stdin)
    assert ran.code == 2
    assert ran.out == ""
    assert "standard input must hold one jobgate key" in ran.err
