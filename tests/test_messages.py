"""The batch message: validation on both ends and the 64 KiB guarantee."""

from __future__ import annotations

import json

import pytest

from workpool.errors import MessageError
from workpool.messages import MAX_MESSAGE_BYTES, BatchMessage, encoded_size, pack_batches


def message(images: list[str], **fields: object) -> BatchMessage:
    values: dict[str, object] = {
        "run_id": "r1",
        "batch_id": "b000000",
        "task": "classification",
        "source": "/data",
        "images": images,
    }
    values.update(fields)
    return BatchMessage.model_validate(values)


def test_a_message_round_trips_as_plain_json_text() -> None:
    sent = message(["a.jpg", "sub/ünï €.jpg"], model="az://models/inception.keras")
    text = sent.encode()
    assert json.loads(text)["schema_version"] == 1
    assert BatchMessage.decode(text) == sent


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("not json", "not JSON"),
        ("[1]", "expected an object"),
        ('{"schema_version": 99}', "unsupported schema_version 99"),
        ('{"schema_version": 1, "run_id": "r"}', "batch_id"),
        (
            json.dumps({"schema_version": 1, "run_id": "r", "batch_id": "b", "task": "t", "source": "s", "images": []}),
            "images",
        ),
        (
            json.dumps(
                {
                    "schema_version": 1,
                    "run_id": "r",
                    "batch_id": "b",
                    "task": "t",
                    "source": "s",
                    "images": ["a"],
                    "x": 1,
                }
            ),
            "x",
        ),
    ],
)
def test_a_bad_message_raises_a_message_error_with_its_reason(text: str, reason: str) -> None:
    with pytest.raises(MessageError, match=reason):
        BatchMessage.decode(text)


@pytest.mark.parametrize(
    "name", ["../etc/passwd", "a/../../b.jpg", "/abs/path.jpg", "C:\\x.jpg", "az://other/x.jpg", "", "a\x00b"]
)
def test_names_that_could_leave_the_source_are_refused(name: str) -> None:
    with pytest.raises(MessageError):
        BatchMessage.decode(
            json.dumps(
                {"schema_version": 1, "run_id": "r", "batch_id": "b", "task": "t", "source": "s", "images": [name]}
            )
        )


def test_pack_batches_keeps_the_batch_size_for_ordinary_names() -> None:
    names = [f"img{i:05d}.jpg" for i in range(130)]
    batches = list(pack_batches(names, 64, overhead_bytes=200))
    assert [len(b) for b in batches] == [64, 64, 2]
    assert [n for b in batches for n in b] == names


@pytest.mark.parametrize("unit", ["é", "水", "&", "<", "🐍"])
def test_long_unicode_and_escaped_names_split_batches_instead_of_exceeding_64_kib(unit: str) -> None:
    names = [f"{i:04d}-" + unit * 900 + ".jpg" for i in range(200)]
    template = message(["x"])
    overhead = encoded_size(template.model_copy(update={"images": []}).encode())
    batches = list(pack_batches(names, 64, overhead))
    assert len(batches) > len(names) // 64 + 1
    assert [n for b in batches for n in b] == names
    for batch in batches:
        assert encoded_size(template.model_copy(update={"images": batch}).encode()) <= MAX_MESSAGE_BYTES
