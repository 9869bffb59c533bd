"""Which emulated node a loopback connection comes from (Linux /proc), for the metadata service.

On Azure each VM asks its own instance metadata service; here every node shares one loopback
server, so the caller is found the way `ss -p` would: the connection's socket inode in
/proc/net/tcp, then the process that holds it, then the node whose process group that is.
"""

from __future__ import annotations

import os
from pathlib import Path


def socket_inode(client_port: int, server_port: int) -> str | None:
    """The inode of the client end of a 127.0.0.1 connection to `server_port`."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if int(local.rsplit(":", 1)[1], 16) == client_port and int(remote.rsplit(":", 1)[1], 16) == server_port:
                return inode
    return None


def group_holding(inode: str, groups: set[int]) -> int | None:
    """The process group (one of `groups`) of the process that holds socket `inode`."""
    target = f"socket:[{inode}]"
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            group = int(stat.read_text().rsplit(")", 1)[1].split()[2])
            if group not in groups:
                continue
            fds = stat.parent / "fd"
            if any(os.readlink(fds / fd) == target for fd in os.listdir(fds)):
                return group
        except (OSError, ValueError, IndexError):
            continue
    return None
