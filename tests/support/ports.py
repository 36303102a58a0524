"""A port for a server that must be told its number before it binds it: the daemon's HTTP
port is in its settings, and its public URL in the links of the messages it sends.

Picking a free number (bind port 0, close, hand the number over) races with every other
process on the machine: one can take the port before the server binds it. A reservation
keeps the port bound instead, by a socket with SO_REUSEADDR that never listens. Until it
is released, no bind to port 0 gets that port (the kernel gives out only ports nothing is
bound to) and an explicit bind without SO_REUSEADDR fails; the server, which binds with
SO_REUSEADDR (asyncio's create_server does on Unix) and listens, gets it, and only it
accepts connections there.

Servers the tests start themselves bind port 0 and read the port they got (see
tests/support/smtp.py): nothing to reserve."""

from __future__ import annotations

import socket


class ReservedPorts:
    """Ports held for servers to bind, released by close() (the `reserved_ports` fixture
    releases them at the end of the test)."""

    def __init__(self) -> None:
        self._held: list[socket.socket] = []

    def reserve(self, host: str = "127.0.0.1") -> int:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, 0))
        except OSError:
            sock.close()
            raise
        self._held.append(sock)
        return int(sock.getsockname()[1])

    def close(self) -> None:
        for sock in self._held:
            sock.close()
        self._held.clear()
