"""Listening ports for local brokers are picked below the kernel's ephemeral range, where no
outgoing connection can take one between the pick and the server's bind."""

from __future__ import annotations

import socket

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


def test_a_port_in_use_is_never_picked() -> None:
    taken = free_ports(1)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", taken))
        sock.listen()
        assert all(free_ports(1) != taken for _ in range(200))
