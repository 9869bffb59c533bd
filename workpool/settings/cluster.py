"""Where cluster nodes run (Batch AI, Azure Batch, Azure ML) and what they install."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator

from workpool.settings.checks import check_endpoint
from workpool.settings.tags import CONTAINER_NAME, LOCAL


class ClusterSettings(BaseModel):
    """Where cluster nodes run (Batch AI, Azure Batch, Azure ML) and what they install."""

    # --- cluster placement (Batch AI and Azure Batch) ------------------------------------
    subscription_id: str | None = None
    resource_group: str | None = None
    location: str | None = None
    workspace: str | None = None
    cluster: str | None = None
    batch_account_url: str | None = None
    pool: str | None = None
    vm_size: str | None = Field(
        None,
        description="GPU VM size of the nodes (required by the cluster backends), e.g. Standard_NC24ads_A100_v4.",
    )
    vm_priority: Literal["dedicated", "spot", "lowpriority"] = Field(
        "dedicated",
        description="dedicated, or spot (preemptible, discounted; `lowpriority`, the retired name, is an alias).",
    )
    arm_endpoint: str = "https://management.azure.com"
    # What the cluster backends put on each node (docs/azure.md explains each one).
    image_publisher: str = Field("microsoft-dsvm", description="Node OS image: marketplace publisher.")
    image_offer: str = Field("ubuntu-hpc", description="Node OS image: offer (ubuntu-hpc ships NVIDIA drivers).")
    image_sku: str = Field("2404", description="Node OS image: SKU (Ubuntu 24.04).")
    image_version: str = Field("latest", description="Node OS image: version.")
    node_agent_sku_id: str = Field("batch.node.ubuntu 24.04", description="Azure Batch node agent matching the image.")
    node_package: str | None = Field(
        None,
        description="Override of what nodes install: a pinned pip requirement or wheel URL "
        "(default: the wheel of this very version, built and uploaded by `launch`).",
    )
    node_files: str = Field(
        "workpool-node-files",
        description="Blob container for what nodes install (wheel, bootstrap, constraints): `launch` writes it, "
        "nodes only read it; give consumers no write access to it (docs/azure.md).",
    )
    node_os_disk_gb: int | None = Field(
        None,
        ge=30,
        le=4095,
        description="OS disk of Azure Batch nodes in GB (default: the image's; container pools: 128, "
        "Docker keeps its images there).",
    )
    node_extras: str = Field(
        "gpu", description="Extras installed with the project on nodes (comma-separated; empty for none)."
    )
    node_image: str | None = Field(
        None,
        description="Container image (<registry>/<image>:<tag>) for a container pool; unset: start-task install.",
    )
    batch_scope: str | None = Field(
        None, description="Entra ID scope of the Batch data plane (default: derived from arm_endpoint's cloud)."
    )
    node_workers: str = Field(
        "auto",
        description="`consumer run --workers` on each node: auto (one per GPU) or N.",
        json_schema_extra=LOCAL,  # the local supervisor reads it; cluster nodes get it on the command line
    )
    experiment: str = Field("workpool", description="Batch AI experiment holding the consumer jobs.")
    batchai_admin_user: str = Field("workpool", description="Batch AI cluster admin user name.")
    batchai_ssh_public_key: str | None = Field(None, description="Batch AI cluster admin's SSH public key.")
    batchai_log_path: str = Field(
        "$AZ_BATCHAI_JOB_TEMP", description="Batch AI stdOutErrPathPrefix (a mounted path keeps logs after the node)."
    )
    batch_job: str = Field("workpool", description="Azure Batch job id holding the consumer tasks.")
    batch_account_name: str | None = Field(None, description="Azure Batch account name (default: from the URL).")
    batch_account_key: SecretStr | None = Field(None, description="Azure Batch shared key (default: Entra ID).")
    batch_pool_allocation: Literal["batchservice", "usersubscription"] = Field(
        "batchservice",
        description="The Batch account's pool allocation mode (user subscription refuses shared-key auth).",
    )
    batch_share_storage_key: bool = Field(
        False,
        description="Azure Batch without a managed identity: put the storage connection string or SAS token in "
        "the job's environment (anyone with Batch Account Reader on the account can read it).",
    )
    managed_identity_id: str | None = Field(
        None, description="Resource id of a user-assigned managed identity for Azure Batch pool nodes."
    )
    managed_identity_client_id: str | None = Field(
        None, description="Client id of that identity; nodes get it as AZURE_CLIENT_ID for DefaultAzureCredential."
    )
    aml_idle_scale_down_s: int = Field(
        300,
        ge=0,
        description="Azure Machine Learning compute: seconds a node stays idle before the cluster releases it "
        "(AmlCompute idle_time_before_scale_down).",
    )
    cluster_poll_interval_s: float = Field(
        10.0, ge=0, description="Seconds between polls of long-running cluster operations."
    )

    @field_validator("node_files")
    @classmethod
    def _node_files_container(cls, value: str) -> str:
        if not CONTAINER_NAME.match(value):
            raise ValueError("expected an Azure container name: 3-63 lowercase letters, digits or single hyphens")
        return value

    @field_validator("arm_endpoint", "batch_account_url")
    @classmethod
    def _cluster_endpoint(cls, value: str | None) -> str | None:
        if value is not None:
            check_endpoint(value)
        return value
