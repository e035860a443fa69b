"""Security headers on every api response, and CORS only where configured."""

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Same-origin scripts, styles and fetches only: no inline code, no framing.
# The status page (static files from this origin) works under it.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
# FastAPI's /docs and /redoc load their scripts from a CDN and start them inline.
DOCS_CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
    "font-src https://fonts.gstatic.com; img-src 'self' data: https://fastapi.tiangolo.com "
    "https://cdn.redoc.ly; worker-src blob:; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
DOCS_PATHS = ("/docs", "/redoc")
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
)
# Every header SecurityHeaders adds unless the response set its own: for the
# api, and for the docs pages.
API_DEFAULTS = (
    *SECURITY_HEADERS,
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"cache-control", b"no-store"),
)
DOCS_DEFAULTS = (
    *SECURITY_HEADERS,
    (b"content-security-policy", DOCS_CONTENT_SECURITY_POLICY.encode()),
    (b"cache-control", b"no-store"),
)
DEFAULT_NAMES = frozenset(name for name, _ in API_DEFAULTS)
# Headers a browser client may send and read across origins (when CORS is on).
CORS_ALLOW_HEADERS = ["Authorization", "Content-Type", "Idempotency-Key", "X-Request-Id"]
CORS_EXPOSE_HEADERS = ["Location", "Retry-After", "X-Request-Id", "WWW-Authenticate"]


class SecurityHeaders:
    """Adds the headers above; `Cache-Control: no-store` unless the response set
    its own, since job data (payloads, results) must not sit in shared caches."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        docs = scope["path"].startswith(DOCS_PATHS)
        defaults = DOCS_DEFAULTS if docs else API_DEFAULTS

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                if present.isdisjoint(DEFAULT_NAMES):  # most answers: add them all
                    headers += defaults
                else:
                    headers += [(n, v) for n, v in defaults if n not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def setup_headers(app: FastAPI, cors_origins: list[str]) -> None:
    """Security headers always (outside CORS, so preflights get them too);
    CORS only for the origins given (none: off)."""
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=CORS_ALLOW_HEADERS,
            expose_headers=CORS_EXPOSE_HEADERS,
            max_age=600,
        )
    app.add_middleware(SecurityHeaders)
