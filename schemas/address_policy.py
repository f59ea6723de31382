"""The address rule for every URL we fetch or call on a user's behalf (inputs, webhooks).

Untrusted URLs never reach private networks by default: a host is resolved once, every address
it resolves to is checked with :func:`forbidden_reason`, and the connection goes to a checked
address. Operators widen the rule through configuration, never per request.
"""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def forbidden_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public internet address, or None when it is one."""
    candidates: list[IPAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:  # judged as the IPv4 address it is
        candidates = [ip.ipv4_mapped]
    elif isinstance(ip, ipaddress.IPv6Address):
        candidates += [ip.sixtofour] if ip.sixtofour else []
        candidates += [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)] if ip in _NAT64 else []
    for address in candidates:
        for kind in ("loopback", "link_local", "multicast", "unspecified", "reserved", "private"):
            if getattr(address, f"is_{kind}"):
                return f"{kind.replace('_', '-')} address {ip}"
        if not address.is_global:
            return f"non-public address {ip}"
    return None
