"""Settings reach every child through one hand-off derived from the fields' tags, and settings the
Azure SDKs would refuse are settings errors (exit 2, one line naming the setting, no secret)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from workpool.handoff import child_env, node_environment, secret_env_names
from workpool.settings import SECRET_FIELDS, Settings, env_name, handoff_of, load_settings

ROOT = Path(__file__).resolve().parents[1]
KEY = "c2VjcmV0LWtleS12YWx1ZS0xMjM0NTY3ODkw"
CONN = f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={KEY};EndpointSuffix=core.windows.net"


def _a_set_value(name: str) -> Any:
    """A valid value for field `name` that differs from its default (so it travels)."""
    samples: dict[str, Any] = {
        "queue": "q-handoff",
        "results": "r-handoff",
        "connection_string": CONN,
        "account_url": "https://acct.blob.core.windows.net",
        "sas_token": "sv=2024&sig=c2lnbmF0dXJlLXZhbHVl",
        "precision": "mixed",
        "home": "/tmp/handoff-home",
        "model_cache": "/tmp/handoff-models",
        "node_workers": "3",
        "task_modules": "handoff_tasks",
        "read_containers": "handoff-images",
        "local_roots": "/tmp/handoff-images",
    }
    if name in samples:
        return samples[name]
    info = Settings.model_fields[name]
    default = info.default
    if isinstance(default, bool):
        return not default
    if isinstance(default, int | float) or (default is None and "float" in str(info.annotation)):
        return 7
    if default is None and "int" in str(info.annotation):
        return 7
    if default is None and "bool" in str(info.annotation):
        return True
    return "http://127.0.0.1:9/handoff" if "url" in name else "handoff-value"


def _settings_with(name: str) -> Settings:
    """Settings with `name` set; a SAS token needs its account URL beside it."""
    flags = {name: _a_set_value(name)}
    if name == "sas_token":
        flags["account_url"] = _a_set_value("account_url")
    return load_settings(**flags)


CONSUMER_FIELDS = [name for name in Settings.model_fields if handoff_of(name) is True]
LOCAL_FIELDS = [name for name in Settings.model_fields if handoff_of(name) == "local"]


def test_secret_fields_are_exactly_the_secret_str_fields() -> None:
    assert set(SECRET_FIELDS) == {"connection_string", "sas_token", "batch_account_key"} | {
        n for n, i in Settings.model_fields.items() if "SecretStr" in str(i.annotation)
    }
    assert {env_name(f) for f in SECRET_FIELDS} <= secret_env_names()


@pytest.mark.parametrize("name", CONSUMER_FIELDS + LOCAL_FIELDS)
def test_every_tagged_setting_reaches_a_local_child_process(name: str, tmp_path: Path) -> None:
    # Given the field set to a non-default value in the parent (the account URL beside a
    # connection string would be refused, so each storage field is set on its own)
    settings = _settings_with(name)
    env = child_env(settings, base={k: v for k, v in os.environ.items() if not k.startswith("WORKPOOL_")})
    # When a real child process loads its settings from that environment
    probe = (
        "import json; from workpool.settings import load_settings; s = load_settings(); "
        f"v = getattr(s, {name!r}); v = v.get_secret_value() if hasattr(v, 'get_secret_value') else v; "
        "print(json.dumps(v, default=str))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True, check=True
    )
    # Then it sees the parent's value
    expected = getattr(settings, name)
    expected = expected.get_secret_value() if isinstance(expected, SecretStr) else expected
    assert json.loads(out.stdout) == json.loads(json.dumps(expected, default=str))


@pytest.mark.parametrize("name", CONSUMER_FIELDS)
def test_every_consumer_setting_reaches_a_cluster_node_environment(name: str, tmp_path: Path) -> None:
    settings = _settings_with(name)
    env = node_environment(settings)
    variables = env.plain | env.secret
    assert env_name(name) in variables
    # Secrets travel only on the secret channel
    assert (env_name(name) in env.secret) == (name in SECRET_FIELDS)
    # And a node loads the same value back from that environment
    probe = (
        "import json; from workpool.settings import load_settings; s = load_settings(); "
        f"v = getattr(s, {name!r}); v = v.get_secret_value() if hasattr(v, 'get_secret_value') else v; "
        "print(json.dumps(v, default=str))"
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("WORKPOOL_") and k != env_name("connection_string")}
    out = subprocess.run(
        [sys.executable, "-c", probe],
        env=base | variables | {"PYTHONPATH": str(ROOT)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    expected = getattr(settings, name)
    expected = expected.get_secret_value() if isinstance(expected, SecretStr) else expected
    assert json.loads(out.stdout) == json.loads(json.dumps(expected, default=str))


@pytest.mark.parametrize("name", LOCAL_FIELDS)
def test_paths_of_this_machine_never_reach_a_cluster_node(name: str) -> None:
    env = node_environment(load_settings(**{name: _a_set_value(name)}))
    assert env_name(name) not in env.plain | env.secret


def test_untagged_settings_stay_with_the_command() -> None:
    settings = load_settings(pool="gpu-pool", batch_account_key="a2V5LWtleS1rZXk=", connection_string=CONN)
    env = child_env(settings, base={})
    node = node_environment(settings)
    for name in ("pool", "batch_account_key"):
        assert env_name(name) not in env
        assert env_name(name) not in node.plain | node.secret


def test_a_managed_identity_node_gets_the_account_url_and_no_secret() -> None:
    settings = load_settings(connection_string=CONN, managed_identity_client_id="client-id-1")
    env = node_environment(settings, identity=True)
    assert env.secret == {}
    assert env.plain[env_name("account_url")] == "https://acct.blob.core.windows.net"
    assert env.plain["AZURE_CLIENT_ID"] == "client-id-1"
    assert KEY not in json.dumps(env.plain)


# --- settings the SDKs would refuse -------------------------------------------------------------
BAD_CONNECTION_STRINGS = {
    "garbage": "garbage",
    "a key without an account": f"AccountKey={KEY}",
    "a key that is not base64": "AccountName=acct;AccountKey=not-base64-secret!!",
    "no credential": "AccountName=acct;EndpointSuffix=core.windows.net",
}

COMMANDS = {
    "workpool settings": ["workpool", "settings"],
    "producer enqueue": ["producer", "enqueue", ".", "--run", "r1"],
    "consumer run": ["consumer", "run", "--workers", "1"],
    "orchestration status": ["orchestration", "status"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("case", list(BAD_CONNECTION_STRINGS))
def test_a_malformed_connection_string_is_one_line_naming_the_setting(case: str, command: str, tmp_path: Path) -> None:
    conn = BAD_CONNECTION_STRINGS[case]
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKPOOL_")}
    env |= {"AZURE_STORAGE_CONNECTION_STRING": conn, "WORKPOOL_HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    module, *args = COMMANDS[command]
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: setting AZURE_STORAGE_CONNECTION_STRING"), lines[0]
    assert "Traceback" not in proc.stderr
    for secret in (KEY, "not-base64-secret"):
        assert secret not in proc.stderr + proc.stdout
