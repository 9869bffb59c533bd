"""The producer: turns an image source into a run (manifest + one queue message per batch).

`producer enqueue` and `producer requeue` are in `producer.cli`; other code calls
`producer.enqueue.enqueue` and `producer.requeue.requeue_failed` / `requeue_missing` directly.
"""
