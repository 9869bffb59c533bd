"""Two producers racing on one `--run`: the manifest is created only if absent, so exactly one
enqueues the run and the other stops with "already exists" (exit 2), leaving the winner's
manifest and messages untouched. Real concurrent `producer enqueue` processes, several rounds,
on both backends.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import backend_env
from tests.support.cli import ROOT
from tests.support.producer_cli import drain_messages
from workpool.runs import RunStore
from workpool.settings import Settings
from workpool.storage import open_result_store

ROUNDS = 5


def images(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True)
    for i in range(count):
        (folder / f"img_{i:03d}.jpg").write_bytes(b"not really pixels: the producer never opens images")
    return folder


def start_enqueue(folder: Path, run_id: str, env: dict[str, str]) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "producer", "enqueue", str(folder), "--run", run_id, "--batch-size", "10",
               "--task", "consumer.tasks.examples:SleepTask"]  # fmt: skip
    return subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_of_two_producers_racing_on_one_run_exactly_one_enqueues_it(settings: Settings, tmp_path: Path) -> None:
    # Two sources of different sizes, so the manifest and the queue tell who won
    sources = {"a": (images(tmp_path / "a", 30), 3), "b": (images(tmp_path / "b", 50), 5)}  # (folder, batches)
    env = backend_env(settings)
    runs = RunStore(open_result_store(settings))
    winners = []
    for round_ in range(ROUNDS):
        run_id = f"race-{round_}"
        # When both producers are started at once on the same run id
        procs = {name: start_enqueue(folder, run_id, env) for name, (folder, _) in sources.items()}
        outcomes = {}
        for name, proc in procs.items():
            _, err = proc.communicate(timeout=120)
            outcomes[name] = (proc.returncode, err)

        # Then exactly one succeeds and the other exits 2 with the usual message
        codes = sorted(code for code, _ in outcomes.values())
        assert codes == [0, 2], outcomes
        [winner] = [name for name, (code, _) in outcomes.items() if code == 0]
        [loser_err] = [err for code, err in outcomes.values() if code == 2]
        assert f"run {run_id} already exists" in loser_err and "Traceback" not in loser_err, loser_err
        winners.append(winner)

        # And the manifest and the queue hold the winner's run, whole, and nothing of the loser's
        manifest = runs.read_manifest(run_id)
        folder, batches = sources[winner]
        assert manifest.source == str(folder) and len(manifest.batches) == batches
        messages = drain_messages(settings)
        assert sorted(m.batch_id for m in messages) == sorted(manifest.batches)
        assert {m.source for m in messages} == {str(folder)}
    print(f"winners over {ROUNDS} rounds: {winners}")
