"""The producer's parts on their own: listing rules, batch planning, checks and retry patience."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from producer.plan import RunSpec, batch_ids, plan_run
from producer.sources import is_image_name, list_source
from producer.validate import check_run_id, check_task, new_run_id
from workpool.errors import NotFoundError, StorageUnavailableError, UsageError
from workpool.messages import ID_PATTERN, MAX_MESSAGE_BYTES, BatchMessage, encoded_size
from workpool.retry import RetryPolicy, retry_transient
from workpool.settings import Settings, load_settings


@pytest.fixture
def local(tmp_path: Path) -> Settings:
    return load_settings(home=tmp_path / "home")


def spec(**overrides: object) -> RunSpec:
    values: dict[str, object] = dict(
        run_id="r1", source="/data", task="classification", model=None, labels=None, batch_size=64, queue="q"
    )
    values.update(overrides)
    return RunSpec(**values)  # type: ignore[arg-type]


# --- listing ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "image"),
    [("a.jpg", True), ("A.JPEG", True), ("x/y.Png", True), ("b.webp", True), ("c.gif", True), ("d.BMP", True),
     ("e.tiff", False), ("jpg", False), ("f.jpg.txt", False), ("dir.jpg/readme", False)],
)  # fmt: skip
def test_images_are_recognised_by_extension_in_any_case(name: str, image: bool) -> None:
    assert is_image_name(name) is image


def test_a_list_of_absolute_paths_takes_their_deepest_common_folder(local: Settings, tmp_path: Path) -> None:
    listing_file = tmp_path / "abs.txt"
    listing_file.write_text("/data/set/b1/x.jpg\n/data/set/b2/y.jpg\n/data/set/b10/z.png\n")
    listing = list_source(local, f"@{listing_file}")
    assert listing.source == "/data/set"  # not "/data/set/b" (a character prefix, not a folder)
    assert listing.images == ["b1/x.jpg", "b10/z.png", "b2/y.jpg"]


def test_a_list_of_blob_uris_in_one_container_becomes_a_blob_source(local: Settings, tmp_path: Path) -> None:
    listing_file = tmp_path / "blobs.txt"
    listing_file.write_text("az://photos/2024/jan/a.jpg\naz://photos/2024/feb/b.jpg\n")
    listing = list_source(local, f"@{listing_file}")
    assert listing.source == "az://photos/2024"
    assert listing.images == ["feb/b.jpg", "jan/a.jpg"]


def test_a_list_mixing_containers_is_refused(local: Settings, tmp_path: Path) -> None:
    listing_file = tmp_path / "mixed.txt"
    listing_file.write_text("az://one/a.jpg\naz://two/b.jpg\n")
    with pytest.raises(UsageError, match="mixes stores"):
        list_source(local, f"@{listing_file}")


def test_the_same_directory_always_lists_the_same_order(local: Settings, tmp_path: Path) -> None:
    for name in ["b.jpg", "a/z.jpg", "A.jpg", "a/b.jpg", "é.jpg", "_.jpg"]:
        (tmp_path / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / name).write_bytes(b"x")
    first = list_source(local, str(tmp_path / "src"))
    assert first.images == sorted(first.images) == ["A.jpg", "_.jpg", "a/b.jpg", "a/z.jpg", "b.jpg", "é.jpg"]
    assert list_source(local, str(tmp_path / "src")) == first


# --- planning --------------------------------------------------------------------------------
def test_batch_ids_count_in_order_and_widen_past_a_million() -> None:
    assert batch_ids(3) == ["b000000", "b000001", "b000002"]
    wide = batch_ids(1_000_001)
    assert wide[-1] == "b1000000" and wide[0] == "b0000000"
    assert wide == sorted(wide)


def test_a_plan_fills_batches_up_to_the_batch_size() -> None:
    plan = plan_run(spec(batch_size=3), [f"{i}.jpg" for i in range(7)])
    assert plan.batch_ids == ["b000000", "b000001", "b000002"]
    assert [len(b) for b in plan.manifest.batches.values()] == [3, 3, 1]
    assert [BatchMessage.decode(body).images for body in plan.bodies] == list(plan.manifest.batches.values())


def test_a_long_model_uri_and_long_names_still_fit_in_64_kib() -> None:
    long_model = "az://models/" + "m" * 900 + ".keras"
    names = [f"{i:04d}" + "ü&" * 400 + ".jpg" for i in range(300)]
    plan = plan_run(spec(model=long_model, source="az://c/" + "p" * 500), names)
    assert all(encoded_size(body) <= MAX_MESSAGE_BYTES for body in plan.bodies)
    assert max(encoded_size(body) for body in plan.bodies) > MAX_MESSAGE_BYTES * 0.9  # batches were filled
    assert sum(len(b) for b in plan.manifest.batches.values()) == 300


def test_a_name_that_fits_no_message_is_bad_input() -> None:
    with pytest.raises(UsageError, match="cannot fit"):
        plan_run(spec(), ["ok.jpg", "x" * 70_000 + ".jpg"])


# --- checks ----------------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["classification", "cloth_recognition", "pkg.mod:Task", "_x:Y", "a.b.c:D1"])
def test_tasks_of_the_known_forms_are_accepted(task: str) -> None:
    assert check_task(task) == task


BAD_TASKS = ["detection", "Classification", "pkg.mod:", ":Cls", "1pkg:X", "pkg:Cls.attr", "a..b:C"]


@pytest.mark.parametrize("task", BAD_TASKS)
def test_other_tasks_are_refused(task: str) -> None:
    with pytest.raises(UsageError):
        check_task(task)


def test_generated_run_ids_are_valid_dated_and_distinct() -> None:
    moment = datetime(2026, 11, 24, 10, 5, 1, tzinfo=UTC)
    ids = {new_run_id(moment) for _ in range(20)}
    assert all(re.match(ID_PATTERN, i) and i.startswith("run-20261124-100501-") for i in ids)
    assert len(ids) > 1


@pytest.mark.parametrize("run_id", ["", "-x", "has space", "a/b", "x" * 65])
def test_bad_run_ids_are_refused(run_id: str) -> None:
    with pytest.raises(UsageError, match="run id"):
        check_run_id(run_id)


# --- retry patience --------------------------------------------------------------------------
class Flaky:
    """An operation that fails transiently `failures` times, then succeeds."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise StorageUnavailableError("account blinked")
        return "done"


def test_transient_failures_are_retried_with_jittered_pauses_under_a_growing_ceiling() -> None:
    pauses: list[float] = []
    flaky = Flaky(failures=4)
    policy = RetryPolicy(first_delay_s=0.5, max_delay_s=2.0)
    assert retry_transient(flaky, "op", policy, sleep=pauses.append, rng=random.Random(7)) == "done"
    # Full jitter: each pause lies anywhere under its ceiling, 0.5 s doubling up to 2 s
    ceilings = [0.5, 1.0, 2.0, 2.0]
    assert len(pauses) == 4
    assert all(0 <= pause <= ceiling for pause, ceiling in zip(pauses, ceilings, strict=True)), pauses
    assert len(set(pauses)) == 4  # drawn, not fixed


def test_patience_runs_out_and_the_last_error_is_raised() -> None:
    now = [0.0]
    pauses: list[float] = []
    flaky = Flaky(failures=100)

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        now[0] += seconds

    with pytest.raises(StorageUnavailableError):
        retry_transient(
            flaky,
            "op",
            RetryPolicy(first_delay_s=1, max_delay_s=1, give_up_after_s=5),
            sleep=sleep,
            clock=lambda: now[0],
            rng=random.Random(3),
        )
    # Every pause is at most 1 s, so at least six tries fit in the 5 s of patience; it gave up
    # only when the next pause would have passed them
    assert flaky.calls == len(pauses) + 1 >= 6
    assert sum(pauses) <= 5


def test_permanent_errors_are_not_retried() -> None:
    calls = []

    def missing() -> None:
        calls.append(1)
        raise NotFoundError("container gone")

    with pytest.raises(NotFoundError):
        retry_transient(missing, "op", sleep=lambda s: None)
    assert calls == [1]
