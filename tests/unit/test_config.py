import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from bot.config import DEFAULT_COSTS, Settings, load_settings
from bot.errors import ConfigError
from bot.settings_doc import render_env, render_table

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)


def test_defaults_load_without_any_setting():
    settings = load_settings(None)
    assert settings.costs == DEFAULT_COSTS
    assert settings.sqlite_path == Path("data/bot.db")
    assert settings.configured_providers() == ()
    assert str(settings.modelslab_base_url) == "https://modelslab.com/api/v1/enterprise"
    assert str(settings.nanobanana_base_url).rstrip("/") == "https://nano-banana-pro.net"


def test_example_env_lists_every_setting_and_loads(tmp_path):
    text = (ROOT / "config.example.env").read_text()
    assert text == render_env(), "regenerate with: python -m bot.settings_doc write"
    for name in Settings.model_fields:
        assert f"\n{name.upper()}=" in text or f"\n# {name.upper()}=" in text
    settings = load_settings(ROOT / "config.example.env")
    assert settings.discord_token is None


def test_example_env_sets_only_what_must_be_set(monkeypatch):
    """`docker run --env-file .env` passes every line it finds: a default written out
    (DATA_DIR=data) would override the image's DATA_DIR=/data and put the database
    inside the container, lost with it."""
    from dotenv import dotenv_values

    values = dotenv_values(ROOT / "config.example.env")
    assert set(values) == {"DISCORD_TOKEN", "MODELSLAB_API_KEY", "NANOBANANA_API_KEY"}
    assert all(value == "" for value in values.values())
    # Each of the others is there to uncomment, with the default it would set.
    text = (ROOT / "config.example.env").read_text()
    assert "\n# DATA_DIR=data\n" in text
    uncommented = dotenv_values(stream=__import__("io").StringIO(text.replace("\n# ", "\n")))
    assert set(uncommented) == {name.upper() for name in Settings.model_fields}
    # Docker's --env-file: every KEY=VALUE line not starting with # becomes a variable
    # of the container, over the image's ENV.
    environment = {"DATA_DIR": "/data"}  # the Dockerfile's ENV
    for line in text.replace("DISCORD_TOKEN=\n", "DISCORD_TOKEN=MTA.x.y\n").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            environment[key] = value
    monkeypatch.setattr("os.environ", environment)
    settings = load_settings(None)
    assert settings.data_dir == Path("/data")
    assert settings.sqlite_path == Path("/data/bot.db")


def test_readme_table_matches_the_model():
    readme = (ROOT / "README.md").read_text()
    assert render_table() in readme, "regenerate with: python -m bot.settings_doc write"


def test_secrets_are_secretstr_and_hidden_in_repr():
    settings = load_settings(None, discord_token="tok-123456789", modelslab_api_key="ml-abcdefgh")
    assert isinstance(settings.discord_token, SecretStr)
    assert "tok-123456789" not in repr(settings)
    assert "ml-abcdefgh" not in str(settings)
    assert settings.configured_providers() == ("modelslab",)


def test_every_bad_setting_is_named_once_without_echoing_values(monkeypatch):
    monkeypatch.setenv("POLL_MAX", "soon")
    monkeypatch.setenv("MODELSLAB_BASE_URL", "not a url secret-ish")
    monkeypatch.setenv("COSTS", '{"imaginary": 1}')
    monkeypatch.setenv("DEFAULT_TIMEZONE", "Mars/Olympus")
    monkeypatch.setenv("DISCORD_GATEWAY_URL", "http://example.com")
    with pytest.raises(ConfigError) as info:
        load_settings(None)
    message = info.value.user_message
    for name in ("POLL_MAX", "MODELSLAB_BASE_URL", "COSTS", "DEFAULT_TIMEZONE"):
        assert name in message
    assert "DISCORD_GATEWAY_URL: must be a ws:// or wss:// URL" in message
    assert "secret-ish" not in message
    assert "it should be an http(s) URL" in message


def test_costs_merge_with_defaults_and_reject_negative():
    settings = load_settings(None, costs='{"nbpro_4k": 10}')
    assert settings.costs["nbpro_4k"] == 10
    assert settings.costs["text2img"] == DEFAULT_COSTS["text2img"]
    with pytest.raises(ConfigError, match="whole numbers"):
        load_settings(None, costs='{"nbpro_4k": -1}')


def test_unlimited_word_and_empty_values(tmp_path):
    env = tmp_path / ".env"
    env.write_text("DEFAULT_USER_ALLOWANCE=unlimited\nGLOBAL_DAILY_BUDGET=\nDATABASE_URL=\n")
    settings = load_settings(env)
    assert settings.default_user_allowance is None
    assert settings.global_daily_budget is None
    assert settings.database_url is None


def test_require_names_missing_settings_and_what_to_set():
    settings = load_settings(None)
    with pytest.raises(ConfigError) as info:
        settings.require("discord_token", "modelslab_api_key")
    assert "DISCORD_TOKEN: not set; set it to the bot token" in info.value.user_message
    assert "MODELSLAB_API_KEY: not set" in info.value.user_message


def _run_cli(*args, env_file, cwd):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd)}
    return subprocess.run(
        [sys.executable, "-m", "bot", "--env-file", str(env_file), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=60,
    )


def test_run_without_token_exits_2_with_one_message(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("")
    result = _run_cli("run", env_file=env_file, cwd=tmp_path)
    assert result.returncode == 2
    assert "DISCORD_TOKEN: not set" in result.stderr
    assert "MODELSLAB_API_KEY or NANOBANANA_API_KEY" in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_setting_exits_2_without_traceback(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("RETRY_ATTEMPTS=many\nDISCORD_TOKEN=tok-abcdefghijkl\n")
    result = _run_cli("check", env_file=env_file, cwd=tmp_path)
    assert result.returncode == 2
    assert "RETRY_ATTEMPTS" in result.stderr
    assert "Traceback" not in result.stderr
    assert "tok-abcdefghijkl" not in result.stderr + result.stdout


def test_check_reports_configuration(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("DISCORD_TOKEN=tok-abcdefghijkl\nNANOBANANA_API_KEY=sk-abcdefghijkl\n")
    result = _run_cli("check", env_file=env_file, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Providers configured: nanobanana" in result.stdout


def test_shard_settings_from_the_environment(monkeypatch):
    monkeypatch.setenv("SHARD_COUNT", "4")
    monkeypatch.setenv("SHARD_IDS", "1")
    assert load_settings(None).shard_ids == [1]
    monkeypatch.setenv("SHARD_IDS", "0, 3")
    assert load_settings(None).shard_ids == [0, 3]
    monkeypatch.setenv("SHARD_IDS", "4")
    with pytest.raises(ConfigError, match="SHARD_IDS must be ids from 0 to 3"):
        load_settings(None)
    monkeypatch.delenv("SHARD_COUNT")
    monkeypatch.setenv("SHARD_IDS", "0")
    with pytest.raises(ConfigError, match="SHARD_IDS needs SHARD_COUNT"):
        load_settings(None)


def test_readme_command_reference_matches_the_commands():
    from cogs._reference import END, START, render

    readme = (ROOT / "README.md").read_text()
    assert START in readme and END in readme
    assert render() in readme, "regenerate with: python -m cogs._reference write"


def test_a_lease_outlives_two_missed_heartbeats(monkeypatch):
    monkeypatch.setenv("LEASE_TIMEOUT", "10")
    monkeypatch.setenv("LEASE_INTERVAL", "4")
    with pytest.raises(ConfigError, match="LEASE_INTERVAL must be at most a third"):
        load_settings(None)
    monkeypatch.setenv("LEASE_INTERVAL", "3")
    settings = load_settings(None)
    assert (settings.lease_timeout, settings.lease_interval) == (10, 3)
