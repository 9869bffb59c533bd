"""`orchestration dashboard`: the live page and its JSON endpoints (Starlette, served by uvicorn).

Routes (all GET; anything else is 405: the dashboard is read-only):

    /                 the page (static/index.html); it reads only the JSON endpoints below
    /static/...       its JS and CSS, shipped in this package (no CDN: private networks work)
    /api/status       the content of `orchestration status --json`
    /api/timeline     per run shown: batches per worker, poisoned batches, pool events, cost
    /api/history      queue depth and pool size at every refresh since the dashboard started
                      (`?since=<epoch seconds>`: only the newer points)

**Access.** With a token every request must carry it: `Authorization: Bearer <token>`, or the
cookie that opening `/?token=<token>` once sets (HttpOnly, SameSite=Strict; the address is
then redirected without the token, so it stays out of the history). A missing or wrong token
gets 401; tokens are compared in constant time (`hmac.compare_digest`). No page or JSON
contains the token or any other secret.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from orchestration.dashboard.feed import DashboardFeed

STATIC = Path(__file__).parent / "static"
COOKIE = "workpool_dashboard"
SECURITY_HEADERS = {
    # Only this server's own scripts, styles and JSON: no inline script, no third party.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def token_matches(given: str | None, token: str) -> bool:
    """Constant-time comparison (an attacker learns nothing from how long a wrong guess took)."""
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


class TokenGate(BaseHTTPMiddleware):
    """401 unless the request carries the token (header or cookie); `/?token=` sets the cookie."""

    def __init__(self, app: object, token: str | None) -> None:
        super().__init__(app)  # type: ignore[arg-type]
        self.token = token

    async def dispatch(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if request.method not in ("GET", "HEAD"):
            response: Response = PlainTextResponse("read-only: GET only\n", status_code=405)
        elif self.token is None:
            response = await call_next(request)
        elif token_matches(request.query_params.get("token"), self.token):
            # Trade the token in the address for a cookie, and drop it from the address.
            response = RedirectResponse(request.url.remove_query_params("token").path or "/", status_code=303)
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict", path="/")
        elif token_matches(_bearer(request), self.token) or token_matches(request.cookies.get(COOKIE), self.token):
            response = await call_next(request)
        else:
            response = PlainTextResponse(
                "401: this dashboard needs its token (open /?token=<token> once, or send Authorization: Bearer)\n",
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        response.headers.update(SECURITY_HEADERS)
        if request.url.path.startswith("/api/"):
            response.headers["Cache-Control"] = "no-store"
        return response


def _bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


class Json(JSONResponse):
    """JSON as `status --json` writes it (dates and other values as text)."""

    def render(self, content: object) -> bytes:
        return json.dumps(content, ensure_ascii=False, default=str, separators=(",", ":")).encode("utf-8")


def create_app(feed: DashboardFeed, token: str | None) -> Starlette:
    async def page(_request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def status(_request: Request) -> Response:
        return Json(feed.status())

    async def timeline(_request: Request) -> Response:
        return Json(feed.timeline())

    async def history(request: Request) -> Response:
        text = request.query_params.get("since")
        try:
            since = None if text is None else float(text)
        except ValueError:
            return PlainTextResponse("since: expected epoch seconds, like 1767225600.5\n", status_code=400)
        return Json(feed.history(since))

    return Starlette(
        routes=[
            Route("/", page, methods=["GET", "HEAD"]),
            Route("/api/status", status, methods=["GET"]),
            Route("/api/timeline", timeline, methods=["GET"]),
            Route("/api/history", history, methods=["GET"]),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        middleware=[Middleware(TokenGate, token=token), Middleware(GZipMiddleware, minimum_size=2048)],
    )
