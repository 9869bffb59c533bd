"""Settings: sources and their precedence, storage selection, and errors that name the setting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workpool.errors import SettingsError
from workpool.settings import StorageMode, load_settings

CONN = (
    "DefaultEndpointsProtocol=https;AccountName=acct;"
    "AccountKey=c2VjcmV0LWtleS12YWx1ZS0xMjM0NTY3ODkw;EndpointSuffix=core.windows.net"
)


def test_defaults_give_the_embedded_backend_under_dot_workpool() -> None:
    settings = load_settings()
    assert settings.storage_mode is StorageMode.EMBEDDED
    assert settings.home == Path(".workpool")
    assert (settings.queue, settings.poison_queue, settings.results) == (
        "workpool",
        "workpool-poison",
        "workpool-results",
    )


def test_precedence_is_file_then_environment_then_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "workpool.json"
    config.write_text(json.dumps({"queue": "from-file", "batch_size": 8, "WORKPOOL_RESULTS": "file-results"}))
    monkeypatch.setenv("WORKPOOL_QUEUE", "from-env")
    settings = load_settings(config, batch_size=None)
    assert (settings.queue, settings.batch_size, settings.results) == ("from-env", 8, "file-results")
    assert load_settings(config, queue="from-flag").queue == "from-flag"


def test_toml_config_and_the_config_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "workpool.toml"
    config.write_text('queue = "tomlq"\nvisibility_timeout_s = 45\n')
    monkeypatch.setenv("WORKPOOL_CONFIG", str(config))
    settings = load_settings()
    assert (settings.queue, settings.visibility_timeout_s) == ("tomlq", 45)


@pytest.mark.parametrize(
    ("env", "mode"),
    [
        ({"AZURE_STORAGE_CONNECTION_STRING": CONN}, StorageMode.CONNECTION_STRING),
        (
            {
                "WORKPOOL_ACCOUNT_URL": "https://acct.queue.core.windows.net",
                "WORKPOOL_SAS_TOKEN": "sv=1&sig=abcdefghij",
            },
            StorageMode.SAS,
        ),
        ({"WORKPOOL_ACCOUNT_URL": "https://acct.blob.core.windows.net"}, StorageMode.IDENTITY),
    ],
)
def test_storage_is_chosen_by_what_is_set(
    env: dict[str, str], mode: StorageMode, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert load_settings().storage_mode is mode


@pytest.mark.parametrize(
    ("flags", "named", "expected"),
    [
        ({"queue": "Has_Upper"}, "WORKPOOL_QUEUE", "lowercase"),
        ({"queue": "x" * 57}, "WORKPOOL_QUEUE", "poison"),
        ({"results": "no"}, "WORKPOOL_RESULTS", "container name"),
        ({"batch_size": 0}, "WORKPOOL_BATCH_SIZE", "greater than 0"),
        ({"account_url": "http://acct.blob.core.windows.net"}, "WORKPOOL_ACCOUNT_URL", "loopback"),
        ({"message_ttl_s": 0}, "WORKPOOL_MESSAGE_TTL_S", "-1"),
        ({"vm_priority": "cheap"}, "WORKPOOL_VM_PRIORITY", "dedicated"),
    ],
)
def test_a_wrong_setting_names_the_setting_and_what_was_expected(
    flags: dict[str, object], named: str, expected: str
) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(**flags)
    assert named in str(err.value)
    assert expected in str(err.value)


def test_a_wrong_environment_value_is_reported_by_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKPOOL_VISIBILITY_TIMEOUT_S", "soon")
    with pytest.raises(SettingsError, match="WORKPOOL_VISIBILITY_TIMEOUT_S"):
        load_settings()


def test_a_sas_token_without_an_account_url_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKPOOL_SAS_TOKEN", "sv=2024&sig=c2VjcmV0")
    with pytest.raises(SettingsError, match="WORKPOOL_ACCOUNT_URL"):
        load_settings()


def test_plain_http_is_fine_for_loopback_endpoints() -> None:
    assert load_settings(account_url="http://127.0.0.1:10000/devstoreaccount1").storage_mode is StorageMode.IDENTITY


@pytest.mark.parametrize(
    ("content", "suffix", "expected"),
    [
        ("{not json", ".json", "not valid JSON"),
        ("[1, 2]", ".json", "object"),
        ('{"colour": "red"}', ".json", "unknown settings: colour"),
    ],
)
def test_a_bad_config_file_says_what_is_wrong(tmp_path: Path, content: str, suffix: str, expected: str) -> None:
    config = tmp_path / f"cfg{suffix}"
    config.write_text(content)
    with pytest.raises(SettingsError, match=expected):
        load_settings(config)


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_secrets_never_appear_in_errors_or_descriptions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", CONN)
    settings = load_settings()
    key = "c2VjcmV0LWtleS12YWx1ZS0xMjM0NTY3ODkw"
    assert key in settings.secret_values()
    assert key not in repr(settings) and key not in json.dumps(settings.describe())
    with pytest.raises(SettingsError) as err:
        load_settings(connection_string=CONN, batch_size=-1)
    assert key not in str(err.value)


def test_every_setting_belongs_to_exactly_one_group_with_its_environment_name() -> None:
    from workpool.settings import Settings
    from workpool.settings.autoscale import AutoscaleSettings
    from workpool.settings.cluster import ClusterSettings
    from workpool.settings.consumer import ConsumerSettings
    from workpool.settings.reports import ReportSettings
    from workpool.settings.storage import StorageSettings
    from workpool.settings.tags import env_name

    groups = [StorageSettings, ConsumerSettings, ClusterSettings, AutoscaleSettings, ReportSettings]
    owners: dict[str, list[str]] = {}
    for group in groups:
        for name in group.model_fields:
            owners.setdefault(name, []).append(group.__name__)
    assert {name: len(found) for name, found in owners.items() if len(found) != 1} == {}
    assert set(owners) == set(Settings.model_fields)
    assert env_name("queue") == "WORKPOOL_QUEUE" and env_name("vm_size") == "WORKPOOL_VM_SIZE"
    assert set(StorageSettings.model_fields) >= {"home", "queue", "results", "connection_string"}
    assert set(AutoscaleSettings.model_fields) == {n for n in Settings.model_fields if n.startswith("autoscale_")}
