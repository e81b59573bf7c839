"""``gateway.logs``: the redaction processor, the two renderers and the configuration."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from gateway.logs import (
    MASK,
    configure_logging,
    processors,
    redact_text,
    redactor,
    secrets_of,
    stdlib_handler,
)
from gateway.settings import load_settings

KEY = "sk_live_4f8a9c0d2e"


def redact_with(secrets: list[str], **event: Any) -> dict[str, Any]:
    result = redactor(secrets)(None, "info", event)
    assert isinstance(result, dict)
    return result


def redact(**event: Any) -> dict[str, Any]:
    return redact_with([KEY], **event)


@pytest.fixture
def restore_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


# -- redaction ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "api_key",
        "API_KEY",
        "apikey",
        "key",
        "token",
        "access_token",
        "secret",
        "callback_secret",
        "password",
        "authorization",
        "Authorization",
        "x-api-key",
        "X-Api-Key",
        "cookie",
        "Set-Cookie",
    ],
)
def test_sensitive_keys_are_masked_whatever_the_value(key: str) -> None:
    assert redact(**{key: "anything at all"})[key] == MASK
    assert redact(**{key: 12345})[key] == MASK
    assert redact(headers={key: "v"})["headers"][key] == MASK


def test_other_keys_are_kept() -> None:
    event = {
        "event": "job.created",
        "job_id": "job_01",
        "provider": "pulse",
        "state": "queued",
        "polls": 3,
        "idempotency_key": "demo-1",
        "keys": 4,
        "ok": True,
        "eta": None,
    }
    assert redact(**event) == event


def test_a_configured_key_is_masked_inside_any_string() -> None:
    out = redact(
        event=f"calling with {KEY}",
        detail=f"upstream said: key {KEY} is revoked",
        nested={"deeper": [f"x{KEY}y", {"more": (KEY,)}]},
    )
    assert KEY not in repr(out)
    assert out["event"] == f"calling with {MASK}"
    assert out["nested"]["deeper"][0] == f"x{MASK}y"
    assert out["nested"]["deeper"][1]["more"] == [MASK]


def test_objects_are_checked_through_their_repr() -> None:
    class Leaky:
        def __repr__(self) -> str:
            return f"Leaky(key={KEY!r})"

    class Fine:
        def __repr__(self) -> str:
            return "Fine()"

    fine = Fine()
    out = redact(a=Leaky(), b=fine)
    assert KEY not in out["a"]
    assert out["b"] is fine


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc.def-ghi", f"Authorization: {MASK}"),
        ("sent bearer abc123== upstream", f"sent bearer {MASK} upstream"),
        ("Basic dXNlcjpwYXNz", f"Basic {MASK}"),
        ("GET /x?api_key=abc123&page=2", f"GET /x?api_key={MASK}&page=2"),
        ('{"x-api-key": "abc123"}', f'{{"x-api-key": "{MASK}"}}'),
        ("password=hunter2 user=bob", f"password={MASK} user=bob"),
        ("refresh_token: r1", f"refresh_token: {MASK}"),
        ("the token bucket refilled", "the token bucket refilled"),
        ("api_key_file=/run/secrets/k", "api_key_file=/run/secrets/k"),
    ],
)
def test_credential_patterns_in_free_text(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_short_secrets_are_not_searched_for() -> None:
    assert redact_with(["x", "ab", KEY], event="max xab")["event"] == "max xab"


def test_a_key_containing_another_is_masked_whole() -> None:
    out = redact_with(["abcdef", "abcdef-123456"], event="k=abcdef-123456")
    assert out["event"] == f"k={MASK}"


def test_secrets_of_settings(tmp_path: Path) -> None:
    key_file = tmp_path / "pulse.key"
    key_file.write_text(" from-a-file-0042 \n")
    settings = load_settings(
        tmp_path / "none.toml",
        providers={
            "extract": {
                "base_url": "http://x",
                "api_key": "from-env-0001",
                "callback_secret": "cb-secret-9",
            },
            "pulse": {"base_url": "http://y", "api_key_file": str(key_file)},
        },
    )
    assert sorted(secrets_of(settings)) == ["cb-secret-9", "from-a-file-0042", "from-env-0001"]


def test_secrets_of_settings_without_a_key(tmp_path: Path) -> None:
    settings = load_settings(tmp_path / "none.toml", providers={"pulse": {"base_url": "http://y"}})
    assert secrets_of(settings) == []


# -- the chain and its renderers ------------------------------------------------------------------


def run_chain(fmt: str, event: dict[str, Any]) -> str:
    stream = io.StringIO()
    result: Any = dict(event)
    for processor in processors(fmt, [KEY], stream):
        result = processor(None, "warning", result)
    assert isinstance(result, str)
    return result


def test_the_json_chain_renders_one_redacted_object() -> None:
    line = run_chain("json", {"event": "probe", "api_key": KEY, "note": f"Bearer {KEY}"})
    data = json.loads(line)
    assert data["event"] == "probe"
    assert data["level"] == "warning"
    assert data["api_key"] == MASK
    assert data["note"] == f"Bearer {MASK}"
    assert data["timestamp"].endswith("Z")
    assert KEY not in line


def test_the_console_chain_redacts_too() -> None:
    line = run_chain("console", {"event": "probe", "token": KEY, "detail": f"with {KEY}"})
    assert "probe" in line
    assert KEY not in line
    assert MASK in line


def test_tracebacks_are_redacted() -> None:
    try:
        raise RuntimeError(f"upstream refused key {KEY}")
    except RuntimeError:
        for fmt in ("json", "console"):
            line = run_chain(fmt, {"event": "crash", "exc_info": True})
            assert "RuntimeError" in line
            assert KEY not in line


def test_configure_logging_json_with_context(restore_structlog: None) -> None:
    stream = io.StringIO()
    configure_logging("json", "INFO", secrets=[KEY], stream=stream, stdlib=False, cache=False)
    log = structlog.get_logger("test")
    with structlog.contextvars.bound_contextvars(request_id="req-1"):
        log.info("job.created", job_id="job_1", provider="pulse", state="queued", key=KEY)
    log.debug("hidden")
    log.info("after")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["job.created", "after"]
    assert lines[0]["request_id"] == "req-1"
    assert lines[0]["key"] == MASK
    assert "request_id" not in lines[1]


def test_configure_logging_console(restore_structlog: None) -> None:
    stream = io.StringIO()
    configure_logging("console", "DEBUG", secrets=[KEY], stream=stream, stdlib=False, cache=False)
    structlog.get_logger("test").debug("visible", detail=KEY)
    text = stream.getvalue()
    assert "visible" in text
    assert KEY not in text
    assert not text.lstrip().startswith("{")


def test_stdlib_records_pass_the_same_chain() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("jobgate.test.stdlib")
    handler = stdlib_handler("json", [KEY], stream)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("upstream said %s", f"Authorization: Bearer {KEY}")
        try:
            raise ValueError(KEY)
        except ValueError:
            logger.exception("boom")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]
    assert lines[0]["event"] == f"upstream said Authorization: {MASK}"
    assert lines[0]["logger"] == "jobgate.test.stdlib"
    assert "ValueError" in lines[1]["exception"]
    assert KEY not in stream.getvalue()


def test_configure_logging_routes_the_root_logger(restore_structlog: None) -> None:
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    stream = io.StringIO()
    try:
        configure_logging("json", "INFO", secrets=[KEY], stream=stream, cache=False)
        assert len(root.handlers) == 1
        logging.getLogger("aiohttp.access").info("GET /?api_key=%s", KEY)
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
    [line] = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert line["event"] == f"GET /?api_key={MASK}"


def test_secrets_of_settings_include_the_store_dsn_and_its_password(tmp_path: Path) -> None:
    dsn = "postgresql://jobgate:hunter2-pw@db.internal:5432/jobgate"
    settings = load_settings(tmp_path / "none.toml", store={"kind": "postgres", "dsn": dsn})
    assert sorted(secrets_of(settings)) == sorted([dsn, "hunter2-pw"])
    out = redact_with(secrets_of(settings), event=f"could not connect to {dsn}")
    assert "hunter2-pw" not in str(out)
