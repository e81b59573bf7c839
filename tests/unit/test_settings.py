"""Configuration: file + environment layering, and secrets that never come from a config file."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.settings import DEFAULT_CONFIG, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_embedded_default_is_the_sandbox_profile() -> None:
    settings = load_settings(DEFAULT_CONFIG)
    assert settings.sandbox.embedded is True
    assert settings.store.kind == "sqlite"
    assert set(settings.providers) == {"catchall", "extract", "pulse", "platform"}
    for name, provider in settings.providers.items():
        assert provider.base_url.startswith("http://127.0.0.1:8700/"), name
        assert provider.api_key is None
    # The embedded sandbox accepts any key, so each gets a throwaway one.
    assert settings.provider_key("pulse").startswith("sandbox-")
    # Policies follow each provider's guidance, scaled by the sandbox speed.
    catchall = settings.providers["catchall"].policy
    assert catchall.first_delay * settings.sandbox.speed == pytest.approx(60)


@pytest.mark.parametrize("secret", ["api_key", "callback_secret"])
def test_a_secret_in_a_config_file_is_refused(tmp_path: Path, secret: str) -> None:
    path = write(
        tmp_path,
        f'[providers.pulse]\nbase_url = "https://api.runpulse.com"\n{secret} = "sk_live_123"\n',
    )
    with pytest.raises(
        ValueError, match=f"providers.pulse.{secret} is set in a config file"
    ) as info:
        load_settings(path)
    assert "sk_live_123" not in str(info.value)


def test_environment_overrides_the_file_and_carries_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path,
        '[server]\nport = 9000\n[providers.pulse]\nbase_url = "https://api.runpulse.com"\n',
    )
    monkeypatch.setenv("JOBGATE_SERVER__PORT", "9100")
    monkeypatch.setenv("JOBGATE_PROVIDERS__PULSE__API_KEY", "from-env")
    settings = load_settings(path)
    assert settings.server.port == 9100
    assert settings.provider_key("pulse") == "from-env"
    assert "from-env" not in repr(settings)


def test_key_from_a_file(tmp_path: Path) -> None:
    key_file = tmp_path / "pulse.key"
    key_file.write_text("file-key\n")
    path = write(
        tmp_path,
        f'[providers.pulse]\nbase_url = "https://x.test"\napi_key_file = "{key_file}"\n',
    )
    assert load_settings(path).provider_key("pulse") == "file-key"


def test_missing_key_names_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, '[providers.extract]\nbase_url = "https://api.knowledgesdk.com"\n')
    settings = load_settings(path)
    with pytest.raises(ValueError, match="JOBGATE_PROVIDERS__EXTRACT__API_KEY"):
        settings.provider_key("extract")


def test_unknown_provider_and_unknown_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="unknown providers in configuration: acme"):
        load_settings(write(tmp_path, '[providers.acme]\nbase_url = "https://acme.test"\n'))
    with pytest.raises(ValidationError, match="prot"):
        load_settings(write(tmp_path, "[server]\nprot = 1\n"))


def test_policy_bounds_are_validated(tmp_path: Path) -> None:
    text = '[providers.pulse]\nbase_url = "https://x.test"\n[providers.pulse.policy]\njitter = 2\n'
    with pytest.raises(ValidationError, match="jitter"):
        load_settings(write(tmp_path, text))


def test_lease_must_outlast_a_status_call(tmp_path: Path) -> None:
    text = (
        "[runner]\nlease_seconds = 30\n"
        '[providers.pulse]\nbase_url = "https://x.test"\ntotal_timeout = 60\n'
    )
    with pytest.raises(ValidationError, match=r"lease_seconds \(30\) must exceed"):
        load_settings(write(tmp_path, text))


def test_postgres_store_needs_a_dsn_and_takes_it_from_the_environment_or_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValidationError, match="JOBGATE_STORE__DSN"):
        load_settings(tmp_path / "none.toml", store={"kind": "postgres"})
    monkeypatch.setenv("JOBGATE_STORE__KIND", "postgres")
    monkeypatch.setenv("JOBGATE_STORE__DSN", "postgresql://u:pw@127.0.0.1/db")
    settings = load_settings(tmp_path / "none.toml")
    assert settings.store.postgres_dsn() == "postgresql://u:pw@127.0.0.1/db"
    assert "pw" not in repr(settings.store)
    monkeypatch.delenv("JOBGATE_STORE__DSN")
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text("postgresql://u:other@127.0.0.1/db\n")
    from_file = load_settings(
        tmp_path / "none.toml", store={"kind": "postgres", "dsn_file": dsn_file}
    )
    assert from_file.store.postgres_dsn() == "postgresql://u:other@127.0.0.1/db"


def test_a_dsn_in_a_config_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[store]\nkind = "postgres"\ndsn = "postgresql://u:pw@h/db"\n')
    with pytest.raises(ValueError, match="JOBGATE_STORE__DSN"):
        load_settings(config)
