"""`orchestration dashboard` over HTTP: what it serves, and who may read it.

The real command in a child process on a free port, real requests (urllib): /api/status is the
content of `status --json`; poisoned batches come with their reason and the requeue command;
every route is read-only; off loopback a token is required (generated and printed once when
not given), compared in constant time, and no page or JSON holds it or any other secret.
"""

from __future__ import annotations

import hmac
import json
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from orchestration.commands.dashboard import access_token, is_loopback
from orchestration.dashboard import app as dashboard_app
from tests.support.cli import run_cli
from tests.support.dashboard_server import DashboardProcess
from tests.support.images import write_sample_images
from tests.support.orchestration_cli import SLEEP_TASK, enqueue, orchestration
from tests.support.waiting import wait_for
from workpool.runs import PoisonReport, RunStore
from workpool.settings import Settings
from workpool.storage import open_result_store

PATHS = ["/", "/static/app.js", "/static/app.css", "/api/status", "/api/timeline", "/api/history"]


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


OPENER = urllib.request.build_opener(NoRedirect)


def get(url: str, method: str = "GET", **headers: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method, headers=headers)
    try:
        with OPENER.open(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read()


def local(url: str) -> str:
    """The dashboard's address as this machine reaches it (it may listen on 0.0.0.0)."""
    return url.replace("0.0.0.0", "127.0.0.1")


def test_loopback_needs_no_token_other_hosts_do_and_a_short_token_is_refused() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    assert access_token("127.0.0.1", None) == (None, False)
    token, generated = access_token("0.0.0.0", None)
    assert generated and token is not None and len(token) >= 32
    assert access_token("10.1.2.3", "a-given-token-of-enough-length") == ("a-given-token-of-enough-length", False)


def test_tokens_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def compare_digest(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(dashboard_app.hmac, "compare_digest", compare_digest)
    assert dashboard_app.token_matches("s3cret-token-value", "s3cret-token-value")
    assert not dashboard_app.token_matches("s3cret-token-valuX", "s3cret-token-value")
    assert not dashboard_app.token_matches(None, "s3cret-token-value")
    assert compared == [(b"s3cret-token-value", b"s3cret-token-value"), (b"s3cret-token-valuX", b"s3cret-token-value")]


@pytest.mark.slow
@pytest.mark.parametrize("backend", [pytest.param("azurite", marks=pytest.mark.azurite)])
def test_api_status_is_status_json_poisoned_batches_come_with_the_requeue_command_and_nothing_secret(
    settings: Settings, tmp_path: Path
) -> None:
    # Given a run with one poisoned batch whose reason holds the storage secret (a careless task)
    write_sample_images(tmp_path / "images", 6, (32, 24))
    enqueue(settings, tmp_path / "images", "shown", "--task", SLEEP_TASK, "--batch-size", "2")
    secrets = settings.secret_values()
    runs = RunStore(open_result_store(settings))
    reason = f"failed 5 times; last error: cannot open {settings.connection_string.get_secret_value()}"  # type: ignore[union-attr]
    runs.write_poison(PoisonReport(run_id="shown", batch_id="b000002", reason=reason, attempts=5, worker="w-1"))

    with DashboardProcess(settings, tmp_path, {"WORKPOOL_PRICE_PER_NODE_HOUR": "2.5"}) as dashboard:
        # When the JSON endpoints and the page are read
        bodies = {path: get(dashboard.url.rstrip("/") + path) for path in PATHS}
        status = json.loads(bodies["/api/status"][2])
        expected = orchestration(settings, "status", "--json").json()
        timeline = json.loads(bodies["/api/timeline"][2])
        points = json.loads(bodies["/api/history"][2])["points"]
        newer = json.loads(get(dashboard.url + f"api/history?since={points[-1]['t']}")[2])["points"]
        bad_since = get(dashboard.url + "api/history?since=yesterday")
        posted = get(dashboard.url + "api/status", method="POST")
        deleted = get(dashboard.url, method="DELETE")
        output = dashboard.output()

    # Then /api/status is what `status --json` prints (the rate and ETA move with the clock)
    assert all(code == 200 for code, _, _ in bodies.values()), {p: c for p, (c, _, _) in bodies.items()}
    for run in [*status["runs"], *expected["runs"]]:
        run.pop("images_per_s"), run.pop("eta_s")
    assert status == expected
    assert status["runs"][0]["run_id"] == "shown" and status["runs"][0]["batches_poisoned"] == 1
    # the poisoned batch is listed with its reason (redacted) and the exact requeue command
    (run,) = timeline["runs"]
    (poisoned,) = run["poisoned"]
    assert poisoned["batch_id"] == "b000002" and poisoned["attempts"] == 5 and "***" in poisoned["reason"]
    assert run["requeue_command"] == "producer requeue --run shown --failed"
    assert run["cost"]["price_per_node_hour"] == 2.5
    # /api/history: the queue's depth at each refresh; ?since= only the newer ones
    assert points and points[-1]["messages"] == 3 and points[-1]["poison"] == 0
    assert all(p["t"] > points[-1]["t"] for p in newer) and bad_since[0] == 400
    # and no secret is in any page, script or JSON, nor in what the dashboard printed
    for path, (_, headers, body) in bodies.items():
        text = body.decode()
        assert not any(secret in text for secret in secrets), path
        assert "default-src 'self'" in headers["content-security-policy"]
    assert not any(secret in output for secret in secrets)
    # and it is read-only
    assert posted[0] == 405 and deleted[0] == 405
    assert "127.0.0.1" in output


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["embedded"])
def test_off_loopback_every_request_needs_the_generated_token_printed_once(settings: Settings, tmp_path: Path) -> None:
    with DashboardProcess(settings, tmp_path, None, "--host", "0.0.0.0") as dashboard:
        wait_for(lambda: "token (shown once" in dashboard.output(), timeout_s=30, what="the token line")
        output = dashboard.output()
        (token,) = re.findall(r"token \(shown once[^)]*\): (\S+)", output)
        base = local(dashboard.url)
        # Without the token, or with a wrong one: 401 everywhere, static files included
        refused = [get(base.rstrip("/") + path) for path in PATHS]
        wrong = get(base + "api/status", Authorization="Bearer " + "x" * len(token))
        wrong_query = get(base + "?token=" + "y" * len(token))
        # With it: as a bearer header, or as the cookie that /?token= sets once
        bearer = [get(base.rstrip("/") + path, Authorization=f"Bearer {token}") for path in PATHS]
        traded = get(base + "?token=" + token)
        cookie = traded[1].get("set-cookie", "")
        with_cookie = get(base + "api/status", Cookie=cookie.split(";")[0])

    assert output.count(token) == 1  # printed once
    assert [code for code, _, _ in refused] == [401] * len(PATHS)
    assert all(token not in body.decode() for _, _, body in refused)
    assert wrong[0] == 401 and wrong_query[0] == 401
    assert [code for code, _, _ in bearer] == [200] * len(PATHS)
    assert all(token not in body.decode() for _, _, body in bearer)
    assert traded[0] == 303 and traded[1]["location"] == "/"
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    assert with_cookie[0] == 200 and json.loads(with_cookie[2])["queue"]["name"] == settings.queue


@pytest.mark.parametrize("backend", ["embedded"])
def test_a_given_token_is_enforced_on_loopback_too_and_a_short_one_is_a_usage_error(
    settings: Settings, tmp_path: Path
) -> None:
    short = run_cli("orchestration", settings, "dashboard", "--port", "0", "--token", "short")
    assert short.code == 2 and "--token" in short.stderr and "16" in short.stderr
    token = "a-given-token-of-enough-length"
    with DashboardProcess(settings, tmp_path, {"WORKPOOL_DASHBOARD_TOKEN": token}) as dashboard:
        refused = get(dashboard.url + "api/status")
        allowed = get(dashboard.url + "api/status", Authorization=f"Bearer {token}")
        stopped = dashboard.stop()  # Ctrl-C
        output = dashboard.output()
    assert refused[0] == 401 and allowed[0] == 200
    assert stopped == 0
    assert token not in output
