"""How settings are named and how they travel: the one place every settings group and hand-off reads.

Environment names are `WORKPOOL_<FIELD>` upper-cased (the connection string also answers to the Azure
tools' usual `AZURE_STORAGE_CONNECTION_STRING`).
"""

from __future__ import annotations

import re
from typing import Any

ENV_PREFIX = "WORKPOOL_"
CONNECTION_STRING_ENV = "AZURE_STORAGE_CONNECTION_STRING"

# Azure queue names: 3-63 characters, lowercase letters, digits and single hyphens. The poison
# queue appends "-poison" (7 characters), so the work queue's own name stops at 56.
QUEUE_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,55}$")
# Blob container names: 3-63 characters, same alphabet.
CONTAINER_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$")
MODULE_NAME = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")


# How a setting travels (its field's `json_schema_extra`), read by workpool/handoff.py, which derives
# every hand-off from it: the environment of a local child (consumer node, supervisor, worker), the
# environment of a cluster node, and which values are secret (those are `SecretStr` fields).
# - {"to_consumers": True}: consumers need it, on this machine and on cluster nodes;
# - {"to_consumers": "local"}: only processes started on this machine (paths of this machine);
# - untagged: stays with the command that read it (cluster placement, control-plane secrets).
HANDOFF_KEY = "to_consumers"
CONSUMERS: dict[str, Any] = {HANDOFF_KEY: True}
LOCAL: dict[str, Any] = {HANDOFF_KEY: "local"}
# A consumer setting whose value on cluster nodes differs from its default here: nodes get it
# unless the user set one (e.g. the metadata service's Scheduled Events, which exist only on Azure VMs).
NODE_DEFAULT_KEY = "node_default"
SCHEDULED_EVENTS_URL = "http://169.254.169.254/metadata/scheduledevents?api-version=2020-07-01"


def env_name(field: str) -> str:
    if field == "connection_string":
        return CONNECTION_STRING_ENV
    return ENV_PREFIX + field.upper()
