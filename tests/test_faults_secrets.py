"""Secrets never leak: every command, its failures and dry runs included, with every kind configured.

Configured at once: an Azure Storage connection string with its AccountKey (Azurite's), a SAS
token (WORKPOOL_SAS_TOKEN), and an Azure Batch shared key (WORKPOOL_BATCH_ACCOUNT_KEY); failure
cases add a connection string whose own key is wrong, and one whose endpoints are down. Then the
whole life of a run goes through the CLIs at DEBUG and INFO log levels: enqueue, a consumer, a
local pool, status, wait, results in three formats, requeue, teardown, dry runs of all three
launchers, and the usual mistakes. No secret value (nor its URL-encoded form, nor a SAS
signature) may appear in any stdout or stderr, any file under the test's folder (node and
supervisor logs, pool state, exports), any blob of the result store (manifests, results, timing
records, poison reports), or any message left on the queues (poison records carry reasons).
"""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.conftest import backend_env
from tests.support.azurite import Azurite, free_port
from tests.support.cli import ROOT
from tests.support.faults_pool import figures_line, unique_images
from tests.support.images import stage_folder
from workpool.queue import open_queue
from workpool.settings import load_settings
from workpool.storage import open_result_store

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.azurite]


def random_key() -> str:
    return base64.b64encode(secrets.token_bytes(64)).decode()


class Leaks:
    """Runs commands, remembers every output, and finds secret values in text."""

    def __init__(self, secret_values: list[str]) -> None:
        forms = set()
        for value in secret_values:
            forms |= {value, quote(value, safe=""), quote(value, safe="/")}
        self.forms = sorted(forms, key=len, reverse=True)
        self.outputs: list[tuple[str, str]] = []  # (what, text)
        self.seconds: list[tuple[float, str]] = []

    def find(self, text: str) -> list[str]:
        return [form[:6] + "…" for form in self.forms if form in text]

    def run(self, env: dict[str, str], *args: str, expect: int | None = 0, timeout_s: float = 180) -> str:
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s
        )
        what = " ".join(args[:4])
        self.seconds.append((time.monotonic() - started, what))
        self.outputs.append((f"{what} stdout", proc.stdout))
        self.outputs.append((f"{what} stderr", proc.stderr))
        if expect is not None:
            assert proc.returncode == expect, f"{what}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout


def test_no_secret_reaches_outputs_logs_files_or_messages(azurite: Azurite, tmp_path: Path) -> None:
    # Given storage through a connection string with an AccountKey, plus a SAS token and a Batch key
    sas_signature = quote(base64.b64encode(secrets.token_bytes(32)).decode(), safe="")
    sas_token = f"sv=2024-11-04&ss=bq&srt=sco&sp=rwdlacup&se=2031-01-01T00:00:00Z&sig={sas_signature}"
    batch_key, wrong_key = random_key(), random_key()
    settings = load_settings(home=tmp_path / "home", queue="secretq", results="secret-results",
                             connection_string=azurite.connection_string)  # fmt: skip
    account_key = azurite.connection_string.split("AccountKey=")[1].split(";")[0]
    leaks = Leaks([azurite.connection_string, account_key, sas_token, sas_signature, batch_key, wrong_key])
    env = backend_env(settings) | {
        "WORKPOOL_SAS_TOKEN": sas_token,
        "WORKPOOL_BATCH_ACCOUNT_KEY": batch_key,
        "WORKPOOL_EXAMPLE_SLEEP_S": "0.01",
        "WORKPOOL_MAX_ATTEMPTS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    debug = env | {"WORKPOOL_LOG_LEVEL": "DEBUG"}
    names = unique_images(tmp_path / "images", 12)
    source = stage_folder(settings, tmp_path / "images")
    sleep, failing = "consumer.tasks.examples:SleepTask", "consumer.tasks.examples:FailingTask"

    # When a run's whole life goes through the CLIs
    leaks.run(env, "workpool", "settings")
    leaks.run(debug, "workpool", "doctor", "--create")
    leaks.run(debug, "producer", "enqueue", source, "--run", "good", "--task", sleep, "--batch-size", "4")
    leaks.run(env, "producer", "enqueue", source, "--run", "bad", "--task", failing, "--batch-size", "6", "--json")
    with open_queue(settings) as queue:
        queue.send(["not a message at all"])  # a body that goes to poison with a reason
    leaks.run(debug, "consumer", "run", "--idle-exit-s", "2", "--worker-id", "c1")
    leaks.run(env, "producer", "requeue", "--run", "bad", "--failed")
    leaks.run(env, "producer", "requeue", "--run", "good", "--missing", "--json")
    leaks.run(env, "orchestration", "launch", "--nodes", "1", "--wait", "--json", expect=1)  # "bad" is poisoned
    leaks.run(env, "orchestration", "launch", "--nodes", "1")
    leaks.run(env, "orchestration", "status", "--json")
    leaks.run(env, "orchestration", "status", "--run", "good")
    leaks.run(env, "orchestration", "scale", "--nodes", "2")
    leaks.run(env, "orchestration", "wait", "--run", "good", "--json")
    leaks.run(debug, "orchestration", "wait", "--run", "bad", expect=1)
    for suffix in ("csv", "jsonl", "parquet"):
        leaks.run(env, "orchestration", "results", "--run", "good", "--out", str(tmp_path / f"good.{suffix}"))
    leaks.run(env, "orchestration", "results", "--run", "bad", "--out", str(tmp_path / "bad.csv"))
    leaks.run(env, "orchestration", "teardown")

    # and every launcher describes itself in a dry run
    leaks.run(env, "orchestration", "launch", "--nodes", "2", "--dry-run")
    leaks.run(env, "orchestration", "launch", "--nodes", "2", "--dry-run", "--json")
    batch = env | {
        "WORKPOOL_BATCH_ACCOUNT_URL": "https://acct.westeurope.batch.azure.com",
        "WORKPOOL_POOL": "gpu",
        "WORKPOOL_VM_SIZE": "Standard_NC24ads_A100_v4",
        # the key really goes into the job's environment (the opt-in): the dry run must still mask it
        "WORKPOOL_BATCH_SHARE_STORAGE_KEY": "true",
    }
    leaks.run(batch, "orchestration", "launch", "--backend", "azure-batch", "--nodes", "2", "--dry-run", expect=0)
    leaks.run(batch, "orchestration", "launch", "--backend", "azure-batch", "--nodes", "2", "--dry-run", "--json",
              expect=0)  # fmt: skip
    batchai = env | {"WORKPOOL_SUBSCRIPTION_ID": "sub", "WORKPOOL_RESOURCE_GROUP": "rg",
                     "WORKPOOL_LOCATION": "westeurope", "WORKPOOL_WORKSPACE": "ws",
                     "WORKPOOL_CLUSTER": "gpu", "WORKPOOL_VM_SIZE": "Standard_NC24ads_A100_v4",
                     "WORKPOOL_NODE_PACKAGE": "https://example.org/workpool-0.1.0-py3-none-any.whl"}  # fmt: skip
    leaks.run(batchai, "orchestration", "launch", "--backend", "batchai", "--nodes", "2", "--dry-run", "--json")

    # and the usual mistakes and failures happen, with the secrets still configured
    leaks.run(env, "producer", "enqueue", str(tmp_path / "nowhere"), "--run", "x1", expect=2)
    leaks.run(env, "producer", "enqueue", source, "--run", "good", expect=2)  # exists already
    leaks.run(env | {"WORKPOOL_BATCH_SIZE": "5000"}, "producer", "enqueue", source, expect=2)
    leaks.run(env | {"WORKPOOL_QUEUE": "Not_A_Queue"}, "orchestration", "status", expect=2)
    leaks.run(env, "producer", "requeue", "--run", "never-enqueued", "--failed", expect=2)
    config = tmp_path / "config" / "workpool.json"  # a config file holds secrets by design: not scanned
    config.parent.mkdir()
    config.write_text(json.dumps({"connection_string": azurite.connection_string, "visibility_timeout_s": 0}))
    leaks.run(env, "consumer", "run", "--config", str(config), "--idle-exit-s", "1", expect=2)
    wrong = azurite.connection_string.replace(account_key, wrong_key)
    leaks.run(debug | {"AZURE_STORAGE_CONNECTION_STRING": wrong}, "producer", "enqueue", source, "--run", "x2",
              expect=1)  # fmt: skip
    leaks.run(env | {"AZURE_STORAGE_CONNECTION_STRING": wrong}, "orchestration", "wait", "--run", "good", expect=1)
    dead = Azurite()  # ports nobody listens on
    down = dead.connection_string.replace(dead.connection_string.split("AccountKey=")[1].split(";")[0], account_key)
    leaks.run(debug | {"AZURE_STORAGE_CONNECTION_STRING": down}, "producer", "enqueue", source, "--run", "x3",
              expect=1)  # fmt: skip
    unreachable_batch = env | {"WORKPOOL_BATCH_ACCOUNT_URL": f"http://127.0.0.1:{free_port()}",
                               "WORKPOOL_POOL": "gpu", "WORKPOOL_BATCH_ACCOUNT_NAME": "acct",
                               "WORKPOOL_VM_SIZE": "Standard_NC24ads_A100_v4",
                               "WORKPOOL_CLUSTER_POLL_INTERVAL_S": "0",
                               "WORKPOOL_BATCH_SHARE_STORAGE_KEY": "true"}  # fmt: skip
    leaks.run(unreachable_batch, "orchestration", "launch", "--backend", "azure-batch", "--nodes", "1", expect=1,
              timeout_s=240)  # fmt: skip

    # Then no secret is in any output...
    found = {what: hits for what, text in leaks.outputs if (hits := leaks.find(text))}
    assert found == {}, f"secrets in command output: {found}"
    # ...nor in any file the commands wrote (logs, pool state, exports)...
    files = [p for p in tmp_path.rglob("*") if p.is_file() and "config" not in p.parts and "images" not in p.parts]
    in_files = {
        str(p.relative_to(tmp_path)): hits
        for p in files
        if (hits := leaks.find(p.read_bytes().decode("utf-8", "replace")))
    }
    assert in_files == {}, f"secrets in files: {in_files}"
    assert any(p.suffix == ".log" for p in files), "the pool's logs were scanned"
    # ...nor in the result store or on the queues (poison records hold the reasons)
    store = open_result_store(settings)
    blobs = list(store.list())
    in_blobs = {name: hits for name in blobs if (hits := leaks.find(store.read(name).decode("utf-8", "replace")))}
    assert in_blobs == {}, f"secrets in the result store: {in_blobs}"
    assert any("/poison/" in name for name in blobs) and any("/results/" in name for name in blobs)
    bodies = []
    with open_queue(settings) as queue:
        for q in (queue, queue.poison()):
            bodies += [m.body for m in q.receive(32, visibility_timeout_s=1)]
    assert bodies, "the poison queue's records were scanned"
    in_messages = [leaks.find(body) for body in bodies if leaks.find(body)]
    assert in_messages == [], f"secrets in queue messages: {in_messages}"
    figures_line(
        "secrets[azurite]",
        commands=len(leaks.outputs) // 2,
        secret_forms=len(leaks.forms),
        files_scanned=len(files),
        blobs_scanned=len(blobs),
        messages_scanned=len(bodies),
        leaks=0,
        images=len(names),
    )
