"""`make demo` until the consumer and launchers exist: sample messages through the queue and back."""

from __future__ import annotations

from workpool.messages import BatchMessage
from workpool.queue import open_queue
from workpool.settings import load_settings


def main() -> None:
    settings = load_settings()
    queue = open_queue(settings)
    queue.create()
    sent = [
        BatchMessage(run_id="demo", batch_id=f"b{i:06d}", task="classification", source="samples", images=[f"img{i}.jpg"])
        for i in range(3)
    ]
    queue.send([m.encode() for m in sent])
    received = []
    while batch := queue.receive(32, visibility_timeout_s=30):
        for message in batch:
            received.append(BatchMessage.decode(message.body))
            queue.ack(message)
    print(f"sent {len(sent)} batch messages, received and acked {len(received)} on {settings.queue} ({settings.home})")


if __name__ == "__main__":
    main()
