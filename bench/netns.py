"""A network namespace of a run's own making, for cutting one worker off the network.

:class:`NetNamespace` creates a namespace and a veth pair on a ``10.201.S.0/24`` subnet no
other interface uses: the host end carries the brokers' address (``.1``) and, as a ``/32``
of its own, redis's (``.5``); the namespace end is ``.2``. Host processes reach both
addresses (they are local) and the namespace reaches them over the veth, so a blackhole
route inside the namespace cuts exactly one of them (:meth:`cut`, :meth:`heal`).
:meth:`delete` removes everything and is safe to call repeatedly; names carry a random tag,
so parallel runs never meet. Needs root and ``ip`` (iproute2).
"""

from __future__ import annotations

import random
import subprocess
import uuid
from dataclasses import dataclass, field

__all__ = ["NetNamespace", "NetnsError"]


class NetnsError(RuntimeError):
    """An ``ip`` command failed (the message has its output)."""


def _ip(*args: str, check: bool = True) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise NetnsError(f"`ip {' '.join(args)}` failed ({result.returncode}): "
                         f"{(result.stderr or result.stdout).strip()}")
    return result.stdout


def _free_subnet(rnd: random.Random) -> int:
    used = _ip("-o", "-4", "addr", "show")
    candidates = [s for s in range(1, 255) if f" 10.201.{s}." not in used]
    if not candidates:
        raise NetnsError("no free 10.201.S.0/24 subnet left on this machine")
    return rnd.choice(candidates)


@dataclass
class NetNamespace:
    """A namespace ``ssNNNNNN`` joined to the host by veth ``shNNNNNN``/``snNNNNNN``."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    subnet: int = 0
    created: bool = False
    cuts: set[str] = field(default_factory=set)

    @property
    def name(self) -> str:
        return f"ss{self.tag}"

    @property
    def host_link(self) -> str:
        return f"sh{self.tag}"

    @property
    def ns_link(self) -> str:
        return f"sn{self.tag}"

    @property
    def host_ip(self) -> str:
        """The host end of the veth: where the brokers (and the host's workers) listen."""
        return f"10.201.{self.subnet}.1"

    @property
    def ns_ip(self) -> str:
        """The namespace's own address (its worker's web server)."""
        return f"10.201.{self.subnet}.2"

    @property
    def redis_ip(self) -> str:
        """Redis's own address on the host end, so a route can cut redis alone."""
        return f"10.201.{self.subnet}.5"

    def create(self) -> NetNamespace:
        """Create the namespace, the veth pair and the addresses; undone on failure."""
        self.subnet = self.subnet or _free_subnet(random.Random())
        try:
            _ip("netns", "add", self.name)
            self.created = True
            _ip("link", "add", self.host_link, "type", "veth", "peer", "name", self.ns_link)
            _ip("link", "set", self.ns_link, "netns", self.name)
            _ip("addr", "add", f"{self.host_ip}/24", "dev", self.host_link)
            _ip("addr", "add", f"{self.redis_ip}/32", "dev", self.host_link)
            _ip("link", "set", self.host_link, "up")
            self.exec_ip("addr", "add", f"{self.ns_ip}/24", "dev", self.ns_link)
            self.exec_ip("link", "set", self.ns_link, "up")
            self.exec_ip("link", "set", "lo", "up")
        except BaseException:
            self.delete()
            raise
        return self

    def exec_ip(self, *args: str, check: bool = True) -> str:
        """``ip ARGS`` inside the namespace."""
        return _ip("netns", "exec", self.name, "ip", *args, check=check)

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the namespace (``ip netns exec`` execs it: same pid)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def cut(self, address: str) -> None:
        """Blackhole ``address`` inside the namespace: packets to it vanish, no reset."""
        self.exec_ip("route", "add", "blackhole", f"{address}/32")
        self.cuts.add(address)

    def heal(self, address: str) -> None:
        """Remove the blackhole route to ``address``."""
        self.exec_ip("route", "del", "blackhole", f"{address}/32")
        self.cuts.discard(address)

    def delete(self) -> None:
        """Remove the namespace (its veth end, and so the pair, goes with it)."""
        if self.created:
            _ip("netns", "del", self.name, check=False)
            self.created = False
        _ip("link", "del", self.host_link, check=False)
        self.cuts.clear()

    def __enter__(self) -> NetNamespace:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.delete()
