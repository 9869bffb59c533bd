"""Azure Storage service clients built from the settings, and Azure errors mapped to ours.

Retries: the SDK's default policy waits 15 s, then 18 s, then 24 s before giving up, which
stalls a consumer for a minute on a brief blip. We retry a little, quickly, inside the SDK and
let callers (the consumer's loop, the producer's sender) back off for longer outages.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any
from urllib.parse import urlparse, urlunparse

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import ExponentialRetry, QueueServiceClient

from workpool.errors import LeaseLostError, NotFoundError, SettingsError, StorageUnavailableError, WorkpoolError
from workpool.settings import Settings, StorageMode, env_name

# The SDKs log request URLs (which may hold SAS tokens) at INFO; keep them at WARNING.
for _name in ("azure", "azure.core.pipeline.policies.http_logging_policy", "azure.identity"):
    logging.getLogger(_name).setLevel(logging.WARNING)

_CONNECTION_TIMEOUT_S, _READ_TIMEOUT_S = 10, 30


def _client_options() -> dict[str, Any]:
    # A fresh retry policy per client: a policy instance links itself to the next policy of the
    # pipeline it is placed in, so one instance shared by the blob and queue clients sent queue
    # requests down the blob client's pipeline (its connection pool and policies), and back.
    return {
        "retry_policy": ExponentialRetry(initial_backoff=1, increment_base=2, retry_total=2, random_jitter_range=1),
        "connection_timeout": _CONNECTION_TIMEOUT_S,
        "read_timeout": _READ_TIMEOUT_S,
    }


def service_url(account_url: str, service: str) -> str:
    """The queue or blob endpoint of an account URL given for either (…blob… ↔ …queue…)."""
    parsed = urlparse(account_url)
    host = parsed.hostname or ""
    labels = host.split(".")
    if len(labels) > 2 and labels[1] in {"blob", "queue", "dfs", "file", "table"}:
        labels[1] = service
        netloc = ".".join(labels) + (f":{parsed.port}" if parsed.port else "")
        return urlunparse(parsed._replace(netloc=netloc))
    return account_url


@lru_cache(maxsize=1)
def _default_credential() -> Any:
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(exclude_interactive_browser_credential=True)


def _credential(settings: Settings) -> Any:
    if settings.storage_mode is StorageMode.SAS:
        assert settings.sas_token is not None
        return settings.sas_token.get_secret_value()
    return _default_credential()


# AzureQueue.send runs 32 requests at once; requests' default pool keeps 10 connections, so
# the rest were opened anew per request and dropped with a "Connection pool is full" warning.
QUEUE_POOL_CONNECTIONS = 32


def _queue_transport() -> RequestsTransport:
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    session = requests.Session()
    # Retries belong to the SDK's policy (above), never to urllib3 underneath it.
    adapter = HTTPAdapter(pool_maxsize=QUEUE_POOL_CONNECTIONS, max_retries=Retry(total=False, redirect=False))
    for scheme in ("http://", "https://"):
        session.mount(scheme, adapter)
    return RequestsTransport(
        session=session,
        session_owner=True,
        connection_timeout=_CONNECTION_TIMEOUT_S,
        read_timeout=_READ_TIMEOUT_S,
    )


@contextmanager
def _client_settings(field: str) -> Iterator[None]:
    """An SDK's refusal to build a client from a setting is a settings error (exit 2), in one
    line naming the setting; the SDK's own text names the problem, never the value."""
    try:
        yield
    except (ValueError, TypeError) as exc:
        raise SettingsError(f"setting {env_name(field)} ({field}): the Azure SDK refused it: {exc}") from None


def queue_service(settings: Settings) -> QueueServiceClient:
    if settings.connection_string is not None:
        with _client_settings("connection_string"):
            return QueueServiceClient.from_connection_string(
                settings.connection_string.get_secret_value(), transport=_queue_transport(), **_client_options()
            )
    if settings.account_url is None:
        raise WorkpoolError("Azure Storage is not configured")
    with _client_settings("account_url"):
        return QueueServiceClient(
            service_url(settings.account_url, "queue"),
            credential=_credential(settings),
            transport=_queue_transport(),
            **_client_options(),
        )


def blob_service(settings: Settings) -> BlobServiceClient:
    if settings.connection_string is not None:
        with _client_settings("connection_string"):
            return BlobServiceClient.from_connection_string(
                settings.connection_string.get_secret_value(), **_client_options()
            )
    if settings.account_url is None:
        raise WorkpoolError("Azure Storage is not configured")
    with _client_settings("account_url"):
        return BlobServiceClient(
            service_url(settings.account_url, "blob"), credential=_credential(settings), **_client_options()
        )


def error_code(exc: HttpResponseError) -> str:
    """The service's error code ("MessageNotFound"); the SDKs give it as a str enum or a str."""
    code = getattr(exc, "error_code", None)
    return str(getattr(code, "value", code) or "")


@contextmanager
def azure_errors(what: str) -> Iterator[None]:
    """Translate Azure SDK exceptions into workpool's hierarchy, with `what` as context.

    The SDK's own messages can quote request URLs; ours name only the resource and the code.
    """
    try:
        yield
    except (ServiceRequestError, ServiceResponseError) as exc:
        raise StorageUnavailableError(f"{what}: storage unreachable ({type(exc).__name__})") from None
    except ClientAuthenticationError as exc:
        raise WorkpoolError(f"{what}: authentication failed ({error_code(exc) or exc.status_code})") from None
    except ResourceNotFoundError as exc:
        code = error_code(exc)
        if code == "MessageNotFound":
            raise LeaseLostError(f"{what}: message is gone or its receipt is stale") from None
        raise NotFoundError(f"{what}: not found ({code or 404})") from None
    except HttpResponseError as exc:
        code = error_code(exc)
        if code == "PopReceiptMismatch":
            raise LeaseLostError(f"{what}: receipt is stale (renewed or re-delivered elsewhere)") from None
        status = exc.status_code or 0
        if status >= 500 or status in (408, 429):
            raise StorageUnavailableError(f"{what}: service busy or failing ({status} {code})") from None
        raise WorkpoolError(f"{what}: request refused ({status} {code})") from None
    except AzureError as exc:
        raise StorageUnavailableError(f"{what}: {type(exc).__name__}") from None
