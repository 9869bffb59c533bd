"""The suite's tiers (tests/support/tiers.py): each test gets exactly one, from what it uses.

tests/conftest.py applies them at collection and refuses a run where any test would have none
or two; these tests pin the rules it applies.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import tiers
from tests.support.cli import run_cli
from tests.support.models import save_tiny_classifier


def test_an_explicit_tier_wins_over_what_the_test_uses() -> None:
    assert tiers.tier_of({"inprocess", "slow"}, {"azurite"}, starts_processes=True) == "inprocess"
    assert tiers.tier_of({"system"}, set(), starts_processes=False) == "system"


def test_two_explicit_tiers_are_refused() -> None:
    with pytest.raises(ValueError, match="2 tiers"):
        tiers.tier_of({"inprocess", "integration"}, set(), starts_processes=False)


@pytest.mark.parametrize(
    ("markers", "fixtures", "starts", "tier"),
    [
        ({"slow"}, set(), False, "system"),
        ({"faults"}, set(), False, "system"),
        ({"batch_emulator"}, set(), False, "system"),
        (set(), {"own_azurite"}, False, "system"),
        (set(), {"batch_emulator", "azurite"}, False, "system"),
        ({"azurite"}, set(), False, "integration"),
        (set(), {"azurite"}, False, "integration"),
        (set(), {"tmp_path"}, True, "integration"),
        ({"embedded"}, {"tmp_path", "settings"}, False, "inprocess"),
        (set(), set(), None, "system"),  # source unreadable: unknown, so the slowest tier
    ],
)
def test_the_first_rule_that_matches_decides(
    markers: set[str], fixtures: set[str], starts: bool | None, tier: str
) -> None:
    assert tiers.tier_of(markers, fixtures, starts) == tier


def _spawns(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-c", "pass"], check=True)


def _calls_a_helper_that_spawns(tmp_path: Path) -> None:
    _spawns(tmp_path)


def _runs_the_cli(settings: object) -> None:
    run_cli("producer", settings, "--help")  # type: ignore[arg-type]


def _builds_a_model(tmp_path: Path) -> None:
    save_tiny_classifier(tmp_path)


def _stays_here(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("only this process")


def _names_a_process_helper_only_as_a_type(runner: _Spawner) -> None:
    assert runner is not None


class _Spawner:
    def start(self) -> None:
        subprocess.Popen([sys.executable, "-c", "pass"])


@pytest.mark.inprocess  # it reads the helpers' source and runs none of them: inference would say integration
def test_a_process_is_seen_in_the_test_in_its_helpers_and_in_the_support_modules() -> None:
    assert tiers.starts_processes(_spawns, []) is True
    assert tiers.starts_processes(_calls_a_helper_that_spawns, []) is True
    assert tiers.starts_processes(_runs_the_cli, []) is True  # tests/support/cli.py starts it
    assert tiers.starts_processes(_builds_a_model, []) is True  # a TensorFlow model: integration
    assert tiers.starts_processes(_stays_here, []) is False
    assert tiers.starts_processes(_names_a_process_helper_only_as_a_type, []) is False


@pytest.mark.inprocess  # as above
def test_a_fixture_that_starts_a_process_counts_for_the_tests_using_it() -> None:
    assert tiers.starts_processes(_stays_here, [_spawns]) is True
    assert tiers.starts_processes(_stays_here, [_stays_here]) is False


def test_a_test_whose_source_cannot_be_read_is_unknown() -> None:
    assert tiers.starts_processes(len, []) is None


def test_this_run_gave_every_test_exactly_one_tier(request: pytest.FixtureRequest) -> None:
    items = request.session.items
    assert items and all(len(tiers.tiers_of(item)) == 1 for item in items)
    assert tiers.tiers_of(request.node) == ["inprocess"]
