"""GPU VM sizes and priorities a cluster pool may ask for: no retired size, Spot by its name.

Azure retired the first GPU families (NC, NCv2, ND, NV on 6 Sep 2023; NCv3 on 30 Sep 2025; NVv3
and NVv4 on 30 Sep 2026): a pool asking for one of them is refused, or worse, waits for nodes that
never come. They are refused here, before anything is sent, with the current size that replaces
them. NVv4 was also never usable here: its GPUs are AMD Radeon Instinct MI25 partitions (no CUDA).
"""

from __future__ import annotations

import logging
import re

from workpool.errors import SettingsError
from workpool.settings import Settings, env_name

log = logging.getLogger(__name__)

A10 = "Standard_NV36ads_A10_v5"  # NVads A10 v5: 1 × A10 (CUDA), the NVv3 line's successor
A100 = "Standard_NC24ads_A100_v4"  # NC A100 v4: 1 × A100 80 GB, the V100's successor
H100 = "Standard_NC40ads_H100_v5"  # NC H100 v5: 1 × H100 94 GB
T4 = "Standard_NC4as_T4_v3"  # NC T4 v3: 1 × T4, the inference-class successor of K80/P100/M60

# (pattern over the lower-case size without "standard_", family, retired on, successors)
_RETIRED: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    (r"nc(6|12|24|24r)(_promo)?", "NC (K80)", "6 Sep 2023", (T4, A100)),
    (r"nc(6|12|24|24r)s_v2", "NCv2 (P100)", "6 Sep 2023", (T4, A100)),
    (r"nc(6|12|24|24r)s_v3", "NCv3 (V100)", "30 Sep 2025", (A100, H100)),
    (r"nd(6|12|24|24r)s", "ND (P40)", "6 Sep 2023", (A100,)),
    (r"nv(6|12|24)(_promo)?", "NV (M60)", "6 Sep 2023", (T4,)),
    (r"nv(12|24|48)s_v3", "NVv3 (M60)", "30 Sep 2026", (T4, A10)),
    (r"nv(4|8|16|32)as_v4", "NVv4 (AMD MI25: no CUDA at all)", "30 Sep 2026", (T4, A10)),
)


def retired_size(size: str) -> str | None:
    """Why `size` cannot be used any more (family, date, successors), or None when it is not known retired."""
    key = size.strip().lower().removeprefix("standard_")
    for pattern, family, retired_on, successors in _RETIRED:
        if re.fullmatch(pattern, key):
            return (
                f"{size} belongs to the {family} family, retired by Azure on {retired_on}; "
                f"use a current size such as {' or '.join(successors)}"
            )
    return None


def checked_vm_size(settings: Settings, backend: str) -> str:
    """WORKPOOL_VM_SIZE, required and not retired (SettingsError, exit 2, otherwise)."""
    size = (settings.vm_size or "").strip()
    if not size:
        raise SettingsError(
            f"the {backend} backend needs {env_name('vm_size')}: the GPU VM size of the nodes, for example "
            f"{A100} (1 × A100), {H100} (1 × H100) or {T4} (1 × T4); your Batch account needs quota for its family"
        )
    why = retired_size(size)
    if why is not None:
        raise SettingsError(f"setting {env_name('vm_size')}: {why}")
    return size


def is_spot(settings: Settings) -> bool:
    """Whether nodes are Spot (preemptible); `lowpriority`, the retired name, still means Spot."""
    return settings.vm_priority in ("spot", "lowpriority")


def warn_about_priority(settings: Settings) -> None:
    """`lowpriority` still works, with a warning naming its replacement."""
    if settings.vm_priority == "lowpriority":
        log.warning(
            "%s=lowpriority: Azure retired low-priority VMs on 30 Sep 2025; asking for Spot nodes instead "
            "(set %s=spot to silence this warning)",
            env_name("vm_priority"),
            env_name("vm_priority"),
        )
