"""Who may talk to the service: the token on every route, browser origins, backoff after wrong tokens.

One aiohttp middleware (:meth:`Auth.middleware`) runs before every route:

* **Origin.** A request carrying an ``Origin`` header comes from a browser
  page. It is served only when that origin is the service's own (scheme,
  host and port of the request's ``Host``) or listed in
  ``service.auth.origins``; else 403. Without this, any page the operator
  visits could open the websocket (cross-site websocket hijacking). When no
  token is set, a browser must also address the service by a loopback name
  (``localhost``, 127.0.0.1, [::1]): a DNS-rebinding page reaches the port
  under its own name, which would pass a same-origin check.
* **Host.** A token-less service bound to loopback answers only requests
  whose ``Host`` is a loopback name (403 otherwise), with or without an
  ``Origin``: a rebound page's ``<img>``/``<video>`` and same-origin fetches
  send no ``Origin`` but do send its own name as ``Host``.
* **Token.** With ``service.token`` set, HTTP clients send
  ``Authorization: Bearer TOKEN``; a request without it gets 401, except on
  the *open paths*: ``/healthz`` (whose handler then shows only
  ``ok``/``degraded``) and ``/ws`` (whose client may send the token in
  ``hello`` instead; a websocket client may also send the header).
  Tokens are compared with :func:`hmac.compare_digest` (no timing oracle).
* **Backoff.** Wrong tokens are counted per client address, an IPv6 one
  by its /64 (:func:`client_key`; :class:`Backoff`): after ``free_failures`` the address is locked out for
  ``backoff_seconds``, doubling per further failure up to
  ``backoff_max_seconds``; while locked every attempt (HTTP and ``hello``)
  is refused without being compared (429 with ``Retry-After``, or an
  ``unauthorized`` error naming the wait). A right token clears the
  address. A missing token is not counted: it guesses nothing. The table is
  bounded (least recently failed forgotten first), so an attacker with many
  addresses costs memory no more than ``backoff_table`` entries — and can
  evict its own entries, which only returns it to the free failures. Behind a
  reverse proxy every client shares the proxy's address.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

from aiohttp import web
from yarl import URL

from agent.service.config import AuthConfig, is_loopback

AUTHED = web.RequestKey("vmr.authed", bool)
"""Key of a request (``request[AUTHED]``): True when it carried the right token or none is needed."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def client_key(address: str) -> str:
    """The key a client's budgets are counted under: an IPv4 address as it is, IPv6 by its /64.

    One IPv6 host is handed a whole /64 (SLAAC, privacy addresses): keyed by
    address it could rotate through 2**64 of them and start full each time.
    An IPv4-mapped IPv6 address counts as its IPv4 address; anything that is
    not an IP address (a Unix socket's peer, "") is its own key.
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # no zone id ("fe80::1%eth0")
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass
class _Entry:
    failures: int
    until: float
    """Monotonic time the lockout ends (0 while within the free failures)."""


class Backoff:
    """Failed attempts per key (a client address) and the lockout they earn; sans-I/O (``now`` given).

    After ``free`` failures, failure ``free + n`` locks the key for
    ``min(cap, base * 2 ** (n - 1))`` seconds. At most ``size`` keys are kept.
    """

    def __init__(self, *, free: int, base: float, cap: float, size: int) -> None:
        self.free, self.base, self.cap, self.size = free, base, cap, size
        self._table: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._table)

    def locked_for(self, key: str, now: float) -> float:
        """Seconds ``key`` must still wait before its next attempt is compared (0: none)."""
        entry = self._table.get(key)
        return 0.0 if entry is None else max(0.0, entry.until - now)

    def failure(self, key: str, now: float) -> float:
        """Count a failed attempt of ``key``; returns the lockout it now serves (seconds, may be 0)."""
        entry = self._table.pop(key, None) or _Entry(0, 0.0)
        entry.failures += 1
        over = entry.failures - self.free
        lockout = min(self.cap, self.base * 2.0 ** min(over - 1, 62)) if over > 0 else 0.0
        entry.until = now + lockout
        self._table[key] = entry  # most recently failed last
        while len(self._table) > self.size:
            self._table.popitem(last=False)
        return lockout

    def success(self, key: str) -> None:
        """Forget ``key``'s failures."""
        self._table.pop(key, None)


@dataclass(frozen=True)
class Verdict:
    """The outcome of one presented token."""

    ok: bool
    retry_after: float = 0.0
    """Seconds the address is locked out (refused without comparing when > 0 and not ok)."""

    @property
    def message(self) -> str:
        if self.ok:
            return "ok"
        if self.retry_after > 0:
            return f"too many wrong tokens from this address; retry in {math.ceil(self.retry_after)} s"
        return "wrong or missing token"


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header (None when absent or another scheme)."""
    if header is None:
        return None
    scheme, _, value = header.strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _origin_key(url: URL) -> tuple[str, str, int | None] | None:
    if not url.scheme or not url.host:
        return None
    return (url.scheme.lower(), url.host.lower(), url.port)  # yarl fills the scheme's default port


class Auth:
    """The service's token, origin allow-list and backoff; see the module docstring.

    ``open_paths``: routes reachable without the header (their handlers
    decide what an unauthenticated request sees). ``clock``: monotonic
    seconds (injectable for tests).
    """

    def __init__(
        self,
        token: str | None,
        cfg: AuthConfig,
        *,
        open_paths: Collection[str] = (),
        loopback_only: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.token = token
        self.loopback_only = loopback_only
        """Bound to loopback: without a token, only loopback ``Host`` names are served."""
        self.cfg = cfg
        self.open_paths = frozenset(open_paths)
        self.clock = clock
        self.backoff = Backoff(
            free=cfg.free_failures,
            base=cfg.backoff_seconds,
            cap=cfg.backoff_max_seconds,
            size=cfg.backoff_table,
        )
        self._any_origin = "*" in cfg.origins
        self._origins = {key for o in cfg.origins if o != "*" and (key := _origin_key(URL(o))) is not None}

    @property
    def required(self) -> bool:
        return self.token is not None

    # --------------------------------------------------------------- checks
    def check(self, address: str, presented: str | None) -> Verdict:
        """Judge a presented token from ``address`` (counts a wrong one; refuses while locked out)."""
        if self.token is None:
            return Verdict(True)
        if presented is None:
            return Verdict(False)
        now, key = self.clock(), client_key(address)
        wait = self.backoff.locked_for(key, now)
        if wait > 0:
            return Verdict(False, wait)
        if hmac.compare_digest(presented.encode(), self.token.encode()):
            self.backoff.success(key)
            return Verdict(True)
        return Verdict(False, self.backoff.failure(key, now))

    def origin_allowed(self, request: web.Request) -> bool:
        """Whether a request's ``Origin`` (if any) may use the service; see the module docstring."""
        origin = request.headers.get("Origin")
        try:
            own = _origin_key(URL(f"{request.scheme}://{request.host}"))
        except ValueError:
            return False
        if self.token is None and self.loopback_only and (own is None or not is_loopback(own[1])):
            return False  # DNS rebinding without Origin (<img>, <video>, same-origin fetches)
        if origin is None:
            return True  # not a browser page (command-line clients, cameras, scrapers)
        if self.token is None and (own is None or not is_loopback(own[1])):
            return False  # DNS rebinding: a page under its own name reaching a token-less service
        if self._any_origin:
            return True
        try:
            key = _origin_key(URL(origin))
        except ValueError:
            return False
        return key is not None and (key == own or key in self._origins)

    # ----------------------------------------------------------- middleware
    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Refuse foreign origins (403), wrong tokens (401) and locked-out addresses (429)."""
        if not self.origin_allowed(request):
            raise web.HTTPForbidden(text="origin not allowed")
        presented = bearer(request.headers.get("Authorization"))
        if self.token is None:
            request[AUTHED] = True
            return await handler(request)
        if presented is not None:
            verdict = self.check(request.remote or "", presented)
            if verdict.retry_after > 0 and not verdict.ok:
                raise web.HTTPTooManyRequests(
                    text=verdict.message, headers={"Retry-After": str(math.ceil(verdict.retry_after))}
                )
            if not verdict.ok:
                raise web.HTTPUnauthorized(
                    text=verdict.message, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
                )
            request[AUTHED] = True
            return await handler(request)
        request[AUTHED] = False
        if request.path in self.open_paths:
            return await handler(request)
        raise web.HTTPUnauthorized(
            text="send Authorization: Bearer TOKEN", headers={"WWW-Authenticate": "Bearer"}
        )
