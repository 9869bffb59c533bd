"""The CLI as a user drives it against an emulated cluster (Azure Batch or Azure ML) and Azurite.

One base for both emulators' end-to-end tests: enqueue sample images, run `orchestration`
commands with the cluster's environment, wait for a drain, read the results. A failure message
carries the emulator's own view (`describe`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import unique
from tests.support.cli import Outcome, run_cli
from tests.support.images import stage_folder, write_sample_images
from workpool.settings import Settings


@dataclass
class EmulatedCluster:
    settings: Settings
    env: dict[str, str]
    work: Path

    def describe(self) -> str:
        """The emulator's state, for failure messages."""
        raise NotImplementedError

    def cli(self, *args: str, timeout_s: float = 300, **env: Any) -> Outcome:
        return run_cli("orchestration", self.settings, *args, env={**self.env, **env}, timeout_s=timeout_s)

    def enqueue(self, images: int, *args: str, size: tuple[int, int] = (64, 48)) -> tuple[str, list[str]]:
        run_id = unique("run")
        folder = self.work / run_id
        names = write_sample_images(folder, images, size)
        source = stage_folder(self.settings, folder)
        out = run_cli("producer", self.settings, "enqueue", source, "--run", run_id, "--json", *args, env=self.env)
        assert out.code == 0, out.stderr
        return run_id, names

    def model_uri(self, model: Path) -> str:
        """`model` uploaded beside the runs' images (the source container, which nodes may read):
        cluster nodes read no path of this machine (docs/security.md)."""
        return stage_folder(self.settings, model.parent) + f"/{model.name}"

    def drained(self, run_id: str, timeout_s: float = 240) -> dict[str, Any]:
        out = self.cli("wait", "--run", run_id, "--json", "--timeout-s", str(timeout_s), timeout_s=timeout_s + 60)
        assert out.code == 0, f"{out.stdout}\n{out.stderr}\n{self.describe()}"
        report: dict[str, Any] = out.json()
        return report

    def rows(self, run_id: str) -> list[dict[str, Any]]:
        target = self.work / f"{run_id}.jsonl"
        out = self.cli("results", "--run", run_id, "--out", str(target))
        assert out.code == 0, out.stderr
        return [json.loads(line) for line in target.read_text().splitlines() if line.strip()]
