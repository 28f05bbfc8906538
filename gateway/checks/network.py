"""Interfaces, addresses and the default route (netifaces): is this PC on a network at all?

The first thing to rule out when "support cannot reach us": a cable out, no DHCP lease, or a
second network card that took the default route away from the uplink.  The same facts go into
the snapshot (`interface_table`).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from attrs import frozen

from gateway.checks.env import CheckEnv
from gateway.checks.result import NETWORK, CheckResult, failed, passed


@frozen
class Interface:
    name: str
    addresses: tuple[str, ...]
    """``address/prefix`` for each IPv4 and IPv6 address."""


@frozen
class Route:
    family: str
    gateway: str
    interface: str


@frozen
class NetworkFacts:
    interfaces: tuple[Interface, ...]
    default_routes: tuple[Route, ...]

    def networks(self) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
        found = []
        for interface in self.interfaces:
            for text in interface.addresses:
                try:
                    found.append(ipaddress.ip_interface(text))
                except ValueError:
                    continue
        return found

    def usable(self) -> list[tuple[str, str]]:
        """(interface, address) pairs that can reach beyond this PC: not loopback or link-local."""
        usable = []
        for interface in self.interfaces:
            for text in interface.addresses:
                try:
                    address = ipaddress.ip_interface(text).ip
                except ValueError:
                    continue
                if not (address.is_loopback or address.is_link_local):
                    usable.append((interface.name, text))
        return usable

    def to_json(self) -> dict[str, Any]:
        return {
            "interfaces": [
                {"name": i.name, "addresses": list(i.addresses)} for i in self.interfaces
            ],
            "default_routes": [
                {"family": r.family, "gateway": r.gateway, "interface": r.interface}
                for r in self.default_routes
            ],
        }


def _prefix(family: int, entry: dict[str, Any], netifaces: Any) -> str | None:
    address = str(entry.get("addr", "")).split("%", 1)[0]
    if not address:
        return None
    mask = str(entry.get("netmask") or entry.get("mask") or "")
    try:
        if family == netifaces.AF_INET:
            prefix = ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen if mask else 32
        else:
            prefix = int(mask.rsplit("/", 1)[1]) if "/" in mask else _v6_prefix(mask)
    except (ValueError, IndexError):
        prefix = 32 if family == netifaces.AF_INET else 128
    return f"{address}/{prefix}"


def _v6_prefix(mask: str) -> int:
    if not mask:
        return 128
    return bin(int(ipaddress.IPv6Address(mask))).count("1")


def network_facts(netifaces: Any) -> NetworkFacts:
    interfaces = []
    for name in netifaces.interfaces():
        addresses: list[str] = []
        table = netifaces.ifaddresses(name)
        for family in (netifaces.AF_INET, netifaces.AF_INET6):
            for entry in table.get(family, []):
                text = _prefix(family, entry, netifaces)
                if text is not None:
                    addresses.append(text)
        interfaces.append(Interface(str(name), tuple(addresses)))
    routes = []
    defaults = netifaces.gateways().get("default", {})
    for family, label in ((netifaces.AF_INET, "IPv4"), (netifaces.AF_INET6, "IPv6")):
        if family in defaults:
            gateway, interface = defaults[family][:2]
            routes.append(Route(label, str(gateway), str(interface)))
    return NetworkFacts(tuple(interfaces), tuple(routes))


def on_link(facts: NetworkFacts, host: str) -> str | None:
    """How ``host`` (an IP address) is reached without a router: "this PC" or an interface."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if address.is_loopback:
        return "this PC"
    for interface in facts.interfaces:
        for text in interface.addresses:
            try:
                if address in ipaddress.ip_interface(text).network:
                    return interface.name
            except ValueError:
                continue
    return None


def check_network(env: CheckEnv, hop_addresses: list[str] | None) -> CheckResult:
    """Addresses and a way out towards the first hop (the proxy, or the relay)."""
    facts = network_facts(env.netifaces())
    hop = env.first_hop
    what = "the proxy" if env.proxy is not None else "the relay"
    candidates = [hop.host, *(hop_addresses or [])]
    local = next((via for via in (on_link(facts, h) for h in candidates) if via), None)
    if local == "this PC":
        return passed(NETWORK, f"{what} {hop} is on this PC")
    usable = facts.usable()
    described = ", ".join(f"{name} {address}" for name, address in usable)
    if not usable:
        return failed(
            NETWORK,
            "no network interface has an address (only loopback or link-local ones)",
            "check the network cable of the uplink port and that it gets an address "
            "(DHCP, or a static address from plant IT)",
        )
    if local is not None:
        return passed(NETWORK, f"{described}; {what} {hop} is on the local network ({local})")
    if not facts.default_routes:
        return failed(
            NETWORK,
            f"{described}, but no default route: nothing beyond the local networks is reachable",
            f"ask IT for the router (default gateway) of this network and set it, or a route to "
            f"{hop.host}",
        )
    routes = ", ".join(f"via {r.gateway} ({r.interface})" for r in facts.default_routes)
    return passed(NETWORK, f"{described}; default route {routes}")
