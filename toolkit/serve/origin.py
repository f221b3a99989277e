"""Which Host names and browser origins the server answers (DNS rebinding, cross-site posts).

With no API key (the default on loopback), any web page a user opens could post to a local server, and a
page whose DNS name is rebound to 127.0.0.1 could read the answers. So:

- the Host header must name this server: serve.allowed_hosts, else the loopback names, the bound address, and,
  when bound to all interfaces, any IP literal (a rebinding attack needs a DNS name; "*" turns the check off;
  ".example.com" allows the domain and its subdomains). Anything else: 400.
- a browser request to /v1/* from another origin (its `Origin` header differs from the Host it was sent to) is
  refused (403) unless the origin is listed in serve.cors_origins ("*": any), which also turns CORS on for it.
"""
from __future__ import annotations

import ipaddress
from typing import Optional

from toolkit.config import ServeConfig
from toolkit.serve.errors import ApiError

_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
_ALL_INTERFACES = {"0.0.0.0", "::", ""}


def host_name(host_header: str) -> str:
    """'Example.com:8000' -> 'example.com'; '[::1]:8000' -> '::1'; a trailing dot dropped."""
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[1:h.find("]")] if "]" in h else h
    if h.count(":") == 1:
        h = h.split(":", 1)[0]
    return h.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


class OriginPolicy:
    def __init__(self, settings: ServeConfig):
        allowed = [h.strip().lower().rstrip(".") for h in settings.allowed_hosts]
        self.any_host = "*" in allowed
        bound = settings.host.strip().lower().strip("[]")
        self.names = set(_LOOPBACK_NAMES) | {h for h in allowed if not h.startswith(".")}
        self.suffixes = tuple(h for h in allowed if h.startswith("."))
        self.any_ip = bound in _ALL_INTERFACES
        if not self.any_ip:
            self.names.add(bound)
        self.origins = {o.strip().rstrip("/").lower() for o in settings.cors_origins}
        self.any_origin = "*" in self.origins

    def host_allowed(self, host_header: Optional[str]) -> bool:
        if self.any_host or host_header is None:  # no Host at all: HTTP/1.0, never a browser
            return True
        name = host_name(host_header)
        return (name in self.names or (self.any_ip and _is_ip(name))
                or any(name.endswith(s) or name == s[1:] for s in self.suffixes))

    def origin_allowed(self, origin: Optional[str], host_header: Optional[str]) -> bool:
        """A request without Origin (curl, scripts, same-origin GETs) or from the page's own origin passes."""
        if origin is None or self.any_origin:
            return True
        origin = origin.strip().rstrip("/").lower()
        if origin in self.origins:
            return True
        netloc = origin.split("://", 1)[1] if "://" in origin else None
        return netloc is not None and host_header is not None and netloc == host_header.strip().lower()

    def refusal(self, headers, api: bool) -> Optional[ApiError]:
        host = headers.get("host")
        if not self.host_allowed(host):
            return ApiError(400, "invalid_host", f"Host {host!r} is not a name of this server; add it to "
                            "serve.allowed_hosts if clients reach the server by that name")
        if api and not self.origin_allowed(headers.get("origin"), host):
            return ApiError(403, "cross_origin", f"requests from web pages at {headers.get('origin')!r} are "
                            "refused; add that origin to serve.cors_origins to allow it")
        return None
