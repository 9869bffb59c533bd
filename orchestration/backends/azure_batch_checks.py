"""What an Azure Batch launch checks before it sends anything, and how it signs in to Batch.

`check_launch` is the one list of checks `launch` and `launch --dry-run` both run (SettingsError,
exit 2, naming the settings; warnings for what is allowed but risky):
- the account, the pool and a current GPU size; shared-key auth refused on a user-subscription
  account (such an account takes Microsoft Entra ID only);
- Azure Storage for the queue and results; with a managed identity, the subscription and resource
  group its ARM request needs;
- keys stay home: no storage connection string or SAS token in the job's environment (readable by
  the account's Batch Account Readers) unless WORKPOOL_BATCH_SHARE_STORAGE_KEY says so;
- without an identity, the resource files' read-only links expire: a warning saying when.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlparse

from azure.batch import BatchClient
from azure.core.credentials import AzureNamedKeyCredential

from orchestration.backends import azure_batch_bodies as bodies
from orchestration.backends.cluster_common import bearer_policy, default_credential, require, require_azure_storage
from orchestration.backends.vm_sizes import checked_vm_size, is_spot
from orchestration.wheel import SAS_LIFETIME
from workpool.errors import SettingsError
from workpool.settings import Settings, env_name

log = logging.getLogger(__name__)

# Entra ID scope of the Batch data plane, per cloud (ARM host → Batch resource).
_BATCH_SCOPES = {
    "management.azure.com": "https://batch.core.windows.net//.default",
    "management.chinacloudapi.cn": "https://batch.chinacloudapi.cn//.default",
    "management.usgovcloudapi.net": "https://batch.core.usgovcloudapi.net//.default",
}


def require_batch(settings: Settings) -> None:
    """What every command needs: the account, the pool, a current VM size, an auth the account takes."""
    s = settings
    require(s, "azure-batch", "batch_account_url", "pool")
    checked_vm_size(s, "azure-batch")
    if s.batch_pool_allocation == "usersubscription" and s.batch_account_key is not None:
        raise SettingsError(
            f"{env_name('batch_account_key')} is set but {env_name('batch_pool_allocation')}=usersubscription: "
            "a Batch account in user-subscription mode accepts only Microsoft Entra ID, never its shared key; "
            f"unset {env_name('batch_account_key')} and sign in (`az login`, a service principal or a managed "
            "identity with a Batch role on the account)"
        )


def check_launch(settings: Settings) -> None:
    """Everything `launch` checks before it sends anything; `--dry-run` runs exactly this too.

    SettingsError (exit 2) naming the settings; warnings for what is allowed but risky.
    """
    s = settings
    require_batch(s)
    require_azure_storage(s, "azure-batch")
    if s.managed_identity_id:
        require(s, "azure-batch with a managed identity", "subscription_id", "resource_group")
        bodies.account_name(s)  # the ARM path needs it: named now, not after the upload
    check_keys(s)
    warn_about_links(s)


def check_keys(settings: Settings) -> None:
    """Keys stay home: no storage key or SAS token in the job's environment unless the user opts in."""
    s = settings
    if s.managed_identity_id:
        return
    if s.connection_string is not None or s.sas_token is not None:
        what = "connection string" if s.connection_string is not None else "SAS token"
        if not s.batch_share_storage_key:
            raise SettingsError(
                f"without a managed identity the nodes would need the storage {what} in the job's environment, "
                "where anyone with the Batch Account Reader role on the account can read it: set "
                f"{env_name('managed_identity_id')} (and {env_name('account_url')}) so nodes sign in with the "
                f"pool's identity, or set {env_name('batch_share_storage_key')}=true to send it anyway"
            )
        log.warning(
            "%s=true: the storage %s travels to the nodes in the job's environment, readable by anyone with "
            "the Batch Account Reader role on this Batch account; prefer a user-assigned identity (%s)",
            env_name("batch_share_storage_key"),
            what,
            env_name("managed_identity_id"),
        )
    elif s.account_url is not None:
        log.warning(
            "nodes will sign in to %s with DefaultAzureCredential but the pool has no managed identity "
            "(%s): their consumers will fail to authenticate",
            s.account_url,
            env_name("managed_identity_id"),
        )


def warn_about_links(settings: Settings) -> None:
    """Without an identity, the resource files' SAS links expire: say when and what renews them."""
    s = settings
    if s.managed_identity_id or bodies.container_image(s):
        return
    hours = SAS_LIFETIME.total_seconds() / 3600
    log.warning(
        "no managed identity (%s): nodes download the wheel through read-only links valid for %.0f h; `launch`, "
        "`scale` and the autoscaler renew them whenever they add nodes, but a node Batch adds or restarts on its "
        "own after that (a Spot replacement, a re-imaged node) fails its start task: use an identity for pools "
        "that live longer",
        env_name("managed_identity_id"),
        hours,
    )


def spot_hint(settings: Settings, text: str) -> str:
    """What a refused Spot pool or resize needs, in words (empty when Spot is not involved)."""
    if not is_spot(settings) and "lowpriority" not in text.lower():
        return ""
    return (
        " (Spot nodes need Spot vCPU quota for the VM family: in a Batch-service account the account's "
        "low-priority/Spot core quota (since March 2026 Batch-service accounts get Spot through the "
        "low-priority fields), in a user-subscription account the subscription's Spot quota; request it in "
        f"the portal (docs/azure.md), or set {env_name('vm_priority')}=dedicated)"
    )


def batch_client(settings: Settings, credential: Any = None) -> BatchClient:
    """The data-plane client: the account's shared key when set, else Entra ID (`credential` or the default)."""
    s = settings
    url = s.batch_account_url or ""
    if s.batch_account_key is not None:
        key = AzureNamedKeyCredential(bodies.account_name(s), s.batch_account_key.get_secret_value())
        return BatchClient(url, key, retry_total=2, retry_backoff_factor=0.5)
    credential = credential if credential is not None else default_credential()
    return BatchClient(
        url,
        credential,
        authentication_policy=bearer_policy(credential, batch_scope(s)),
        retry_total=2,
        retry_backoff_factor=0.5,
    )


def batch_scope(settings: Settings) -> str:
    """The Entra ID scope of the Batch data plane: WORKPOOL_BATCH_SCOPE, else the ARM endpoint's cloud."""
    if settings.batch_scope:
        return settings.batch_scope
    host = (urlparse(settings.arm_endpoint).hostname or "").lower()
    if host in _BATCH_SCOPES:
        return _BATCH_SCOPES[host]
    if host == "localhost" or host.replace(".", "").isdigit():
        return _BATCH_SCOPES["management.azure.com"]  # a loopback test server stands in for the public cloud
    raise SettingsError(
        f"set {env_name('batch_scope')}: the Batch sign-in scope of the cloud behind "
        f"{env_name('arm_endpoint')}={settings.arm_endpoint} is not known (e.g. https://batch.core.windows.net//.default)"
    )
