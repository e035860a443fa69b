"""Security headers on every api response, and CORS only where configured
(both added by the api's middleware, edge.Edge)."""

# Same-origin scripts, styles and fetches only: no inline code, no framing.
# The status page and the docs page (static files from this origin) work under it.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
    # HSTS: once a browser reached the api over https (behind the ingress's
    # TLS), it uses only https for a year. Browsers ignore it on plain http
    # (RFC 6797 8.1), so a local http run is unaffected; no includeSubDomains:
    # the api does not speak for its parent domain's other hosts.
    (b"strict-transport-security", b"max-age=31536000"),
)
# Every header the api adds unless the response set its own.
API_DEFAULTS = (
    *SECURITY_HEADERS,
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"cache-control", b"no-store"),
)
DEFAULT_NAMES = frozenset(name for name, _ in API_DEFAULTS)
# Headers a browser client may send and read across origins (when CORS is on).
CORS_ALLOW_HEADERS = ["Authorization", "Content-Type", "Idempotency-Key", "X-Request-Id"]
CORS_EXPOSE_HEADERS = ["Location", "Retry-After", "X-Request-Id", "WWW-Authenticate"]


def security_headers(path: str) -> tuple[tuple[bytes, bytes], ...]:
    """The headers every answer at `path` gets, unless it set its own;
    `Cache-Control: no-store` among them, since job data (payloads, results)
    must not sit in shared caches. Added by the api's middleware (edge.Edge).
    The same at every path: the docs page too is served from this origin
    (routes/docs.py)."""
    return API_DEFAULTS
