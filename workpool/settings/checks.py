"""Checks of setting values shared by the groups: lists, endpoints, connection strings, secrets in them."""

from __future__ import annotations

import base64
import binascii
import ipaddress
from urllib.parse import urlparse


def split_list(value: str) -> list[str]:
    """The items of a comma-separated setting, stripped, empty ones dropped."""
    return [item.strip() for item in value.split(",") if item.strip()]


def secret_parts_of_connection_string(conn: str) -> list[str]:
    """The secret values inside a connection string (account key, SAS signature and token)."""
    parts: list[str] = []
    for item in conn.split(";"):
        key, _, value = item.partition("=")
        if key.strip().lower() in {"accountkey", "sharedaccesssignature"} and value:
            parts.append(value.strip())
            parts.extend(signature_of(value))
    return parts


_ENDPOINT_KEYS = ("blobendpoint", "queueendpoint")


def check_connection_string(conn: str) -> None:
    """Refuse, at load time, a connection string the Azure SDKs would refuse later (or fail on
    at the first signed request). Messages name the missing or broken part, never a value."""
    parts: dict[str, str] = {}
    for item in conn.split(";"):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(
                "expected key=value pairs separated by ';' (DefaultEndpointsProtocol=https;AccountName=…;"
                "AccountKey=…;EndpointSuffix=core.windows.net), as the portal's 'Access keys' page shows it"
            )
        parts[key.strip().lower()] = value.strip()
    if parts.get("usedevelopmentstorage", "").lower() == "true":
        return
    if not parts.get("accountname") and not any(parts.get(k) for k in _ENDPOINT_KEYS):
        raise ValueError("names no account: expected AccountName=… (or a BlobEndpoint=…/QueueEndpoint=…)")
    if not parts.get("accountkey") and not parts.get("sharedaccesssignature"):
        raise ValueError("has no credential: expected AccountKey=… or SharedAccessSignature=…")
    account_key = parts.get("accountkey")
    if account_key:
        try:
            base64.b64decode(account_key, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("its AccountKey is not valid base64 (copy it again from the portal)") from None


def signature_of(sas: str) -> list[str]:
    out = []
    for item in sas.lstrip("?").split("&"):
        key, _, value = item.partition("=")
        if key == "sig" and value:
            out.append(value)
    return out


def check_endpoint(url: str) -> None:
    """https everywhere; plain http only for loopback addresses (Azurite, test servers)."""
    parsed = urlparse(url)
    if parsed.scheme not in {"http", "https"} or not parsed.hostname:
        raise ValueError(f"expected an http(s) URL, got {url!r}")
    if parsed.scheme == "http" and not is_loopback(parsed.hostname):
        raise ValueError(f"plain http is accepted only for loopback hosts; use https for {parsed.hostname}")


def is_link_local(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_link_local
    except ValueError:
        return False


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
