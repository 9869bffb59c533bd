"""Where the queue and the results live, and the credentials that reach them."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator

from workpool.settings.checks import check_connection_string, check_endpoint
from workpool.settings.tags import CONNECTION_STRING_ENV, CONSUMERS, CONTAINER_NAME, ENV_PREFIX, LOCAL, QUEUE_NAME


class StorageSettings(BaseModel):
    """Where the queue and the results live, and the credentials that reach them."""

    # --- where things live ---------------------------------------------------------------
    home: Path = Field(Path(".workpool"), description="Embedded default's folder.", json_schema_extra=LOCAL)
    queue: str = Field(
        "workpool", description="Queue name; its poison queue is <name>-poison.", json_schema_extra=CONSUMERS
    )
    results: str = Field(
        "workpool-results", description="Result store's blob container (Azure).", json_schema_extra=CONSUMERS
    )

    # --- Azure Storage credentials (secrets are SecretStr: never printed) -----------------
    connection_string: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices(CONNECTION_STRING_ENV, ENV_PREFIX + "CONNECTION_STRING"),
        description="Azure Storage connection string.",
        json_schema_extra=CONSUMERS,
    )
    account_url: str | None = Field(
        None,
        description="Storage account URL (https://<acct>.queue… or the account's base URL).",
        json_schema_extra=CONSUMERS,
    )
    sas_token: SecretStr | None = Field(
        None, description="SAS token used with account_url.", json_schema_extra=CONSUMERS
    )

    @field_validator("queue")
    @classmethod
    def _queue_name(cls, value: str) -> str:
        if not QUEUE_NAME.match(value):
            raise ValueError(
                "expected 3-56 lowercase letters, digits or single hyphens, starting and ending "
                "with a letter or digit (the poison queue adds '-poison', up to Azure's 63)"
            )
        return value

    @field_validator("results")
    @classmethod
    def _container_name(cls, value: str) -> str:
        if not CONTAINER_NAME.match(value):
            raise ValueError("expected an Azure container name: 3-63 lowercase letters, digits or single hyphens")
        return value

    @field_validator("account_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None:
            check_endpoint(value)
        return value

    @field_validator("connection_string")
    @classmethod
    def _connection_string(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_connection_string(value.get_secret_value())
        return value

    @property
    def poison_queue(self) -> str:
        return f"{self.queue}-poison"
