"""Faulty SMTP servers for the circuit breaker's tests: a small asyncio server on loopback, in
a thread of its own, that misbehaves in one way.

- "never_greet": accepts the connection and never says a word;
- "drop_after_data": a normal session until the end of the message data, then closes the
  connection without a reply;
- "hang_after_data": the same, but keeps the connection open and never replies.

`received` lists the recipient of each message whose data the server got in full (the ones
it may have kept: what "uncertain" means); `connections` counts the connections accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Literal

Mode = Literal["never_greet", "drop_after_data", "hang_after_data"]


class FaultyServer:
    def __init__(self, mode: Mode) -> None:
        self.mode = mode
        self.host = "127.0.0.1"
        self.port = 0
        self.received: list[str] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        future.result(10)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._session, self.host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        with self._lock:
            self.connections += 1
        try:
            await self._converse(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "never_greet":
            await reader.read()  # until the client gives up
            return
        writer.write(b"220 faulty.test ESMTP\r\n")
        recipient = ""
        while line := await reader.readline():
            command = line.decode("ascii", "replace").strip()
            verb = command[:4].upper()
            if verb == "EHLO":
                writer.write(b"250-faulty.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
            elif verb == "RCPT":
                recipient = command.partition(":")[2].strip().strip("<>")
                writer.write(b"250 OK\r\n")
            elif verb == "DATA":
                writer.write(b"354 go ahead\r\n")
                await writer.drain()
                while await reader.readline() != b".\r\n":
                    pass
                with self._lock:
                    self.received.append(recipient)
                if self.mode == "drop_after_data":
                    return
                await reader.read()  # hang: never a reply, until the client gives up
                return
            elif verb == "QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                return
            else:  # HELO, MAIL, RSET, NOOP
                writer.write(b"250 OK\r\n")
            await writer.drain()


@contextlib.contextmanager
def faulty_server(mode: Mode) -> Iterator[FaultyServer]:
    server = FaultyServer(mode)
    server.start()
    try:
        yield server
    finally:
        server.stop()
