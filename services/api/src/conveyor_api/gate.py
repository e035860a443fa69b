"""The gate: a request to a protected route (`/v1/...`, `/task`) without a valid
key is answered by the api's middleware (edge.Edge) before anything reads its
body, parses it or opens a span for it.

Such a request gets 401 (or 429 once its client address is over its rate),
problem+json, with `Connection: close`: the body it may still be sending is
never read, so a client with no key cannot make the api read, buffer or
parse megabytes. What such requests may cost is bounded too: a rate per
client address, kept in this process (GCRA, as the keys' own limit, over a
bounded table of addresses that forgets the least recently seen), no span,
and at most one log line per address per `LOG_INTERVAL_S`, which counts the
refusals it stands for.

The address is the connection's peer, or, only when the api is told how
many proxies it sits behind (`trusted_proxy_hops`), the one those proxies
recorded in `X-Forwarded-For`: a client can write anything there itself.
An IPv6 client is counted by its /64 network, which one host commonly holds
whole: it cannot take a fresh budget with each of its addresses.
"""

import ipaddress
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import Scope

from conveyor_api.auth import AUTHENTICATED_KEY, KeyRing, Unauthenticated, identify, is_protected
from conveyor_core.metrics import HTTP_REQUESTS, LabelCache

logger = logging.getLogger("conveyor.requests")

# At most one log line per client address this often; the next counts the rest.
LOG_INTERVAL_S = 60.0
# The metrics' route label of requests refused here (no route was matched).
REFUSED_ROUTE = "unauthenticated"
# How much of a refused request's path a log line keeps.
LOGGED_PATH_CHARS = 200
# An address longer than this is not one (X-Forwarded-For is client-written).
MAX_ADDRESS_CHARS = 64
# Methods named as such in the metrics; any other is counted as "other".
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

_refused = LabelCache(HTTP_REQUESTS)


@dataclass(frozen=True, slots=True)
class Refusal:
    """The gate's answer to a request it stops: status, problem text and headers."""

    status: int
    title: str
    detail: str
    headers: tuple[tuple[bytes, bytes], ...]


class _Client:
    """What the gate remembers of one client address."""

    __slots__ = ("logged_at", "next_free_s", "unlogged")

    def __init__(self, now_s: float) -> None:
        self.next_free_s = now_s  # GCRA's theoretical arrival time
        self.logged_at = -math.inf  # when a log line last named this address
        self.unlogged = 0  # refusals since that line


class Gate:
    """Authenticates requests to protected routes before their body is read
    (see the module's docstring). One per app, in its middleware."""

    def __init__(
        self,
        keyring: Callable[[], KeyRing],
        *,
        rate_per_s: float,
        burst: int,
        max_clients: int,
        trusted_proxy_hops: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keyring = keyring  # a function: the keys may be replaced while running
        self.interval_s = 1 / rate_per_s if rate_per_s > 0 else 0.0  # 0: no limit
        self.tolerance_s = self.interval_s * burst
        self.max_clients = max_clients
        self.trusted_proxy_hops = trusted_proxy_hops
        self.clock = clock
        self.clients: OrderedDict[str, _Client] = OrderedDict()  # least recent first

    def check(self, scope: Scope, headers: dict[bytes, bytes]) -> Refusal | None:
        """None to let the request in (its key left in the scope for the route),
        or the refusal to send. Only protected routes are checked; a CORS
        preflight (which never carries a key) goes on to CORS."""
        path, root_path = scope["path"], scope.get("root_path", "")
        route_path = path[len(root_path) :] if path.startswith(root_path) else path
        if not is_protected(route_path):
            return None
        if scope["method"] == "OPTIONS" and b"access-control-request-method" in headers:
            return None
        authorization = headers.get(b"authorization", b"").decode("latin-1")
        found = identify(self.keyring(), authorization)
        if not isinstance(found, Unauthenticated):
            scope[AUTHENTICATED_KEY] = found
            return None
        return self._refuse(scope, found, route_path)

    def _refuse(self, scope: Scope, why: Unauthenticated, route_path: str) -> Refusal:
        address = rate_group(client_address(scope, self.trusted_proxy_hops))
        now_s = self.clock()
        client = self._client(address, now_s)
        retry_after_s = self._spend(client, now_s)
        if retry_after_s is None:
            refusal = Refusal(
                401,
                "Unauthorized",
                why.detail,
                ((b"www-authenticate", why.challenge.encode()), (b"connection", b"close")),
            )
            reason = "invalid_key" if why.invalid_key else "no_key"
        else:
            retry_after = str(max(1, math.ceil(retry_after_s)))
            refusal = Refusal(
                429,
                "Too Many Requests",
                "Too many requests without a valid api key from this address; "
                f"retry in {retry_after} s.",
                ((b"retry-after", retry_after.encode()), (b"connection", b"close")),
            )
            reason = "over_rate"
        method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
        _refused.get((method, REFUSED_ROUTE, refusal.status)).inc()
        self._log(client, now_s, address, method, route_path, refusal.status, reason)
        return refusal

    def _client(self, address: str, now_s: float) -> _Client:
        client = self.clients.get(address)
        if client is None:
            client = self.clients[address] = _Client(now_s)
            if len(self.clients) > self.max_clients:
                self.clients.popitem(last=False)  # forget the least recently seen
        else:
            self.clients.move_to_end(address)
        return client

    def _spend(self, client: _Client, now_s: float) -> float | None:
        """GCRA: None if the address is within its rate (one request spent), else
        the seconds until it is."""
        if not self.interval_s:
            return None
        next_free_s = max(client.next_free_s, now_s) + self.interval_s
        allowed_at_s = next_free_s - self.tolerance_s
        if now_s < allowed_at_s:
            return allowed_at_s - now_s
        client.next_free_s = next_free_s
        return None

    def _log(
        self,
        client: _Client,
        now_s: float,
        address: str,
        method: str,
        path: str,
        status: int,
        reason: str,
    ) -> None:
        client.unlogged += 1
        if now_s - client.logged_at < LOG_INTERVAL_S:
            return
        fields = {
            "client": address,
            "method": method,
            "path": path[:LOGGED_PATH_CHARS],
            "status": status,
            "reason": reason,
            # This request and those refused, unlogged, since the last line.
            "refused": client.unlogged,
            "interval_s": LOG_INTERVAL_S,
        }
        logger.info("unauthenticated", extra={"fields": fields})
        client.logged_at = now_s
        client.unlogged = 0


def client_address(scope: Scope, trusted_proxy_hops: int) -> str:
    """The client's address: the connection's peer, or, behind `trusted_proxy_hops`
    proxies that each append the address they were called from to
    `X-Forwarded-For`, the entry the outermost of them wrote (entries further
    left are the client's own word)."""
    peer = scope.get("client")
    address = str(peer[0]) if peer else "unknown"
    if trusted_proxy_hops:
        forwarded = [
            entry.strip()
            for name, value in scope["headers"]
            if name == b"x-forwarded-for"
            for entry in value.decode("latin-1").split(",")
        ]
        if forwarded:
            address = forwarded[-min(trusted_proxy_hops, len(forwarded))]
    return address[:MAX_ADDRESS_CHARS] or "unknown"


def rate_group(address: str) -> str:
    """What shares one budget: an IPv4 address, or an IPv6 address's /64."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:  # not an address (a proxy wrote something else): as it is
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # ::ffff:a.b.c.d is an IPv4 client
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)
