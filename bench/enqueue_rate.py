"""Enqueue rate: the old recipe's 366,111 names into the embedded queue, and the producer on Azurite
against a plain single-thread SDK `send_message` loop, side by side.

- Embedded: `producer enqueue @names.txt` at batch 64 (5,721 messages), through the producer's
  own function: listing, plan, manifest, send. Reported as images/s and messages/s.
- Azurite: the same messages two ways on a shallow queue (purged before each): the producer
  (concurrent sends) and a loop of `QueueClient.send_message` calls, one at a time. The ratio is
  producer messages/s ÷ loop messages/s. Azurite slows with queue depth and is one local
  process, so only the ratio means anything; the count is capped to keep the queue shallow.

    python -m bench.enqueue_rate [--names 366111] [--azurite-messages 300]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import bench_settings, rate_line, ratio_line, scratch_home
from producer.enqueue import EnqueueRequest, enqueue
from workpool.messages import BatchMessage
from workpool.queue import open_queue
from workpool.runs import RunStore
from workpool.settings import Settings
from workpool.storage import open_result_store

OLD_RECIPE_IMAGES = 366_111
BATCH = 64


def imagenet_like_names(count: int, classes: int = 1000) -> list[str]:
    names = []
    for i in range(count):
        synset = f"n{1440764 + (i % classes) * 9973:08d}"
        names.append(f"{synset}/{synset}_{i}.JPEG")
    return names


@dataclass(frozen=True)
class EnqueueFigures:
    images: int
    messages: int
    seconds: float  # the whole enqueue: listing, plan, manifest, send
    send_seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds

    @property
    def messages_per_s(self) -> float:
        return self.messages / self.send_seconds


SLEEP_TASK = "consumer.tasks.examples:SleepTask"  # enqueue needs no model for it


def producer_enqueue(settings: Settings, listing: Path, run_id: str) -> EnqueueFigures:
    summary = enqueue(
        settings, EnqueueRequest(source=f"@{listing}", run_id=run_id, task=SLEEP_TASK), progress_bar=False
    )
    return EnqueueFigures(summary.images, summary.batches, summary.seconds, summary.send_seconds)


def embedded(names: int, home: Path) -> EnqueueFigures:
    listing = home / "names.txt"
    listing.write_text("\n".join(imagenet_like_names(names)) + "\n", encoding="utf-8")
    settings = bench_settings(home, "enqueue-embedded", batch_size=BATCH)
    return producer_enqueue(settings, listing, "enqueue-embedded")


def sdk_loop_messages_per_s(connection_string: str, queue: str, bodies: list[str]) -> float:
    from azure.storage.queue import QueueClient

    client = QueueClient.from_connection_string(connection_string, queue)
    started = time.perf_counter()
    for body in bodies:
        client.send_message(body)
    seconds = time.perf_counter() - started
    client.close()
    return len(bodies) / seconds


def azurite(messages: int, home: Path) -> tuple[EnqueueFigures, float]:
    from tests.support.azurite import Azurite

    server = Azurite()
    server.start()
    try:
        settings = bench_settings(home, "enqueue-azurite", batch_size=BATCH, connection_string=server.connection_string)
        listing = home / "azurite-names.txt"
        listing.write_text("\n".join(imagenet_like_names(messages * BATCH)) + "\n", encoding="utf-8")
        queue = open_queue(settings)
        queue.create()
        producer = producer_enqueue(settings, listing, "enqueue-azurite")
        # The very bodies the producer sent, rebuilt from its manifest.
        manifest = RunStore(open_result_store(settings)).read_manifest("enqueue-azurite")
        bodies = [
            BatchMessage(
                run_id=manifest.run_id, batch_id=batch_id, task=manifest.task, source=manifest.source, images=images
            ).encode()
            for batch_id, images in manifest.batches.items()
        ]
        queue.purge()
        loop = sdk_loop_messages_per_s(server.connection_string, settings.queue, bodies)
        queue.purge()
    finally:
        server.stop()
    return producer, loop


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--names", type=int, default=OLD_RECIPE_IMAGES)
    parser.add_argument("--azurite-messages", type=int, default=300)
    parser.add_argument("--no-azurite", action="store_true")
    args = parser.parse_args(argv)
    print("Enqueue rate", flush=True)
    ratios = []
    with scratch_home("enqueue") as home:
        figures = embedded(args.names, home)
        print(
            f"  embedded: {figures.images:,} names → {figures.messages:,} messages in {figures.seconds:.1f} s: "
            f"{figures.images_per_s:,.0f} images/s ({figures.messages_per_s:,.0f} messages/s while sending)",
            flush=True,
        )
        ratios.append(rate_line(f"embedded enqueue of {figures.images:,} names", figures.images_per_s, "images/s"))
        if not args.no_azurite:
            producer, loop = azurite(args.azurite_messages, home)
            print(
                f"  azurite: {producer.messages} messages of {BATCH} names: producer {producer.messages_per_s:.0f} "
                f"messages/s, single-thread send_message loop {loop:.0f} messages/s",
                flush=True,
            )
            ratios.append(
                ratio_line("azurite producer ÷ SDK send_message loop (messages/s)", producer.messages_per_s / loop)
            )
    print("\n".join(ratios), flush=True)
    return ratios


if __name__ == "__main__":
    main()
