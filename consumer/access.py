"""What a message may make a consumer read: which containers and folders, which kinds of file.

A message names a `source`, a `model` and `labels` (URIs). The queue is a trust boundary
(docs/security.md): whoever can write to it must not be able to make a consumer read what the
operator did not mean it to. So, before anything is fetched:

- a blob URI (`az://<container>/…`) must name an allowed container: the run's own source
  container, the container of the consumer's configured `model`, or one listed in
  `read_containers` (`WORKPOOL_READ_CONTAINERS`);
- a local path must lie under an allowed folder (`local_roots`, `WORKPOOL_LOCAL_ROOTS`): unset
  means any folder of this machine (the local backend), `none` means no local path at all (the
  default on cluster nodes, whose local files are the node's own).

A refusal is a `MessageError` naming the URI, the rule and the setting that widens it: the
batch goes to poison at once (no retry can change the answer). Only regular files are read, each
under its size cap (`max_image_bytes`, `max_model_bytes`, `max_labels_bytes`); those checks are
made where the bytes are read (`workpool.storage`, `consumer.models`).
"""

from __future__ import annotations

from pathlib import Path

from workpool.errors import MessageError
from workpool.messages import BatchMessage
from workpool.settings import Settings, env_name, split_list
from workpool.storage import parse_location


class ReadPolicy:
    """The containers and folders this consumer's messages may name (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.containers = set(split_list(settings.read_containers))
        if settings.model:
            configured = parse_location(settings.model)
            if configured.container is not None:
                self.containers.add(configured.container)
        roots = settings.allowed_local_roots
        self.local_roots = None if roots is None else tuple(root.resolve() for root in roots)

    def check_batch(self, batch: BatchMessage) -> None:
        """Refuse a batch whose source, model or labels lie outside what this consumer may read."""
        self.check_run(batch.source, batch.model, batch.labels)

    def check_run(self, source: str, model: str | None, labels: str | None) -> None:
        """Refuse a run (message or manifest) whose source, model or labels this consumer may not read."""
        container = parse_location(source).container
        for what, uri in (("source", source), ("model", model), ("labels", labels)):
            if uri:
                self.check(what, uri, container)

    def check(self, what: str, uri: str, source_container: str | None) -> None:
        location = parse_location(uri)
        if location.container is not None:
            allowed = self.containers | ({source_container} if source_container else set())
            if location.container not in allowed:
                raise MessageError(
                    f"{what} {uri} refused: container {location.container} is not one this consumer reads "
                    f"(allowed: {', '.join(sorted(allowed)) or 'none'}; widen with {env_name('read_containers')})"
                )
            return
        if self.local_roots is None:
            return
        if not self.local_roots:
            raise MessageError(
                f"{what} {uri} refused: this consumer reads no local paths ({env_name('local_roots')}=none, "
                "the default on cluster nodes); name an az:// URI"
            )
        resolved = Path(location.path).resolve()
        if not any(resolved.is_relative_to(root) for root in self.local_roots):
            raise MessageError(
                f"{what} {uri} refused: not under an allowed folder "
                f"({', '.join(str(r) for r in self.local_roots)}; widen with {env_name('local_roots')})"
            )
