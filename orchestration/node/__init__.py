"""What runs on a cluster node before its consumer: the bootstrap script the start task executes."""

from __future__ import annotations

from pathlib import Path

BOOTSTRAP = Path(__file__).with_name("bootstrap.sh")
BOOTSTRAP_FILE = "workpool-bootstrap.sh"  # its name in the start task's working directory
