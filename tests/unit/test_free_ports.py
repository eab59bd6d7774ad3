"""Listening ports for local brokers are picked below the kernel's ephemeral range, where no
outgoing connection can take one between the pick and the server's bind."""

from __future__ import annotations

import socket

import pytest

from app.dev import kafka_broker
from app.dev.kafka_broker import LISTEN_PORTS_FROM, _ephemeral_ports, free_ports


def test_a_run_of_free_ports_lies_below_the_ephemeral_range_and_can_be_bound() -> None:
    low, _ = _ephemeral_ports()
    for count in (1, 3):
        base = free_ports(count)
        assert base >= LISTEN_PORTS_FROM and base + count <= low
        sockets = [socket.socket() for _ in range(count)]
        try:
            for offset, sock in enumerate(sockets):
                sock.bind(("127.0.0.1", base + offset))
        finally:
            for sock in sockets:
                sock.close()


def test_a_port_in_use_is_never_picked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two ports to pick from, one of them listening: the other every time."""
    base = free_ports(2)
    monkeypatch.setattr(kafka_broker, "LISTEN_PORTS_FROM", base)
    monkeypatch.setattr(kafka_broker, "_ephemeral_ports", lambda: (base + 3, 60999))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", base))
        sock.listen()
        assert {free_ports(1) for _ in range(50)} == {base + 1}
