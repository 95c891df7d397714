"""The dashboard at ``/ui/``: hand-written ES modules and CSS (``static/``), served as they are.

No build step and nothing from another origin: the Content-Security-Policy below (``default-src 'self'``)
lets the page load only its own files and talk only to this coordinator. The page keeps the bearer token in
the tab's sessionStorage and sends it in the Authorization header of every API call (event stream included,
read with ``fetch`` since an ``EventSource`` cannot send headers), so the token never appears in a URL.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STATIC_DIR = Path(__file__).resolve().parent / "static"

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate (ETag/Last-Modified): a new release is picked up at once
}


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every response of the wrapped ASGI app (the dashboard's files only)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()
                         if k.lower().encode() not in names]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def install_ui(app: FastAPI) -> None:
    """Serve the dashboard: ``/ui/`` and its files (StaticFiles, html=True) and ``/ui`` itself, answered with
    the same index page rather than a redirect (the coordinator never redirects; the page uses absolute
    ``/ui/...`` paths, so it works from either address)."""

    index = STATIC_DIR / "index.html"

    @app.get("/ui", include_in_schema=False)
    def ui_index() -> FileResponse:
        return FileResponse(index, media_type="text/html", headers=SECURITY_HEADERS)

    app.mount("/ui", SecurityHeaders(StaticFiles(directory=STATIC_DIR, html=True)), name="ui")
