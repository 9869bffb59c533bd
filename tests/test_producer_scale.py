"""The old recipe's dataset size: 366,111 image names enqueue into 5,721 messages at batch 64.

Names are generated (ImageNet-style `nXXXXXXXX/nXXXXXXXX_<i>.JPEG`, 1,000 classes), not files:
the producer only lists them. The run goes through the real CLI on the embedded backend; the
JSON summary's `seconds` is the figure reported in the producer's note.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.producer_cli import drain_bodies, producer
from workpool.messages import MAX_MESSAGE_BYTES, BatchMessage, encoded_size
from workpool.runs import RunStore
from workpool.settings import Settings
from workpool.storage import open_result_store

IMAGES = 366_111
CLASSES = 1_000


def imagenet_like_names(count: int) -> list[str]:
    names = []
    for i in range(count):
        synset = f"n{1440764 + (i % CLASSES) * 9973:08d}"
        names.append(f"{synset}/{synset}_{i}.JPEG")
    return names


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["embedded"])
def test_366111_names_make_5721_messages_with_every_name_once(settings: Settings, tmp_path: Path) -> None:
    # Given a list file of 366,111 names, in no particular order
    names = imagenet_like_names(IMAGES)
    listing = tmp_path / "imagenet.txt"
    listing.write_text("\n".join(reversed(names)) + "\n", encoding="utf-8")

    # When it is enqueued at batch size 64
    out = producer(settings, "enqueue", f"@{listing}", "--run", "imagenet", "--batch-size", "64", "--json",
                   "--task", "consumer.tasks.examples:SleepTask")  # fmt: skip

    # Then there are 5,721 messages, none over 64 KiB, and their union is the listing, once each
    assert out.code == 0, out.stderr
    summary = out.json()
    assert (summary["images"], summary["batches"]) == (IMAGES, 5_721)
    bodies = drain_bodies(settings)
    assert len(bodies) == 5_721
    assert max(encoded_size(body) for body in bodies) <= MAX_MESSAGE_BYTES
    messages = [BatchMessage.decode(body) for body in bodies]
    union = [name for m in messages for name in m.images]
    assert len(union) == IMAGES
    assert set(union) == set(names)
    assert len({m.batch_id for m in messages}) == 5_721

    # And the manifest, written before sending, records the same batches in sorted order
    manifest = RunStore(open_result_store(settings)).read_manifest("imagenet")
    assert {m.batch_id: m.images for m in messages} == manifest.batches
    assert [n for batch in manifest.batches.values() for n in batch] == sorted(names)
    print(json.dumps({"images": IMAGES, "seconds": summary["seconds"], "send_seconds": summary["send_seconds"]}))
