"""A TCP proxy in front of a server (the local stack's S3), through which a test or benchmark
injects network faults into a real run: the server disappearing, traffic freezing at a chosen
request or at once (a silent endpoint), and a fixed round-trip time (a store far away)."""

from __future__ import annotations

import collections
import queue
import re
import socket
import struct
import threading
import time

from tests.stack import free_ports

_REQUEST_LINE = re.compile(rb"^((?:GET|HEAD|PUT|POST|DELETE) \S+) HTTP/", re.M)


_SLOW_DOWN_BODY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                   b"<Message>Please reduce your request rate.</Message></Error>")
_SLOW_DOWN = (b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: "
              + str(len(_SLOW_DOWN_BODY)).encode() + b"\r\n\r\n" + _SLOW_DOWN_BODY)


class FaultyProxy:
    """Forwards ``127.0.0.1:port`` to ``127.0.0.1:upstream_port``.

    * :meth:`down` resets every connection, the open ones at once and new ones as soon as they
      are accepted (what clients see when the server behind a load balancer dies), until
      :meth:`up`; ``resets`` counts the connections reset, so a test can tell that clients met
      the outage.
    * :meth:`freeze_on` stops all traffic, in both directions, once a client sends bytes that
      match a pattern (an HTTP request line, say); :meth:`freeze` stops it at once, with new
      connections still accepted (an endpoint that answers nothing: a black-holed path, a stuck
      load balancer); :meth:`thaw` lets it flow again.
    * :meth:`stall_on` silences, for good, the one connection whose client sends bytes that match
      a pattern, and only it (a connection a NAT or load balancer forgot mid-request): new
      connections work.
    * ``rtt_s`` delays every byte by half of it in each direction, order kept, throughput not
      limited: what a store tens of milliseconds away adds to each request.
    * ``requests`` lists the HTTP request lines clients sent (``b"GET /bucket/key"``), in order.
    * :meth:`throttle_every` answers every n-th GET itself with S3's "503 SlowDown" (what S3 sends
      a client that asks too fast); ``throttled`` counts them.
    """

    def __init__(self, upstream_port: int, rtt_s: float = 0.0) -> None:
        self.upstream_port = upstream_port
        self.rtt_s = rtt_s
        self.port = free_ports(1)[0]
        self.resets = 0
        self.requests: list[bytes] = []
        self.throttled = 0
        self._throttle_every = 0
        self.frozen = threading.Event()  # set once a freeze_on pattern matched
        self._down = False
        self._flowing = threading.Event()
        self._flowing.set()
        self._trigger: re.Pattern[bytes] | None = None
        self._occurrence = 1
        self._stall: re.Pattern[bytes] | None = None
        self._stalled: set[socket.socket] = set()
        self._matches: collections.Counter = collections.Counter()
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        self._down = False

    def down(self) -> None:
        self._down = True
        with self._lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            self._reset(connection)

    def outage(self, seconds: float) -> int:
        """Down for ``seconds``, then up; returns how many connections it reset meanwhile."""
        before = self.resets
        self.down()
        time.sleep(seconds)
        self.up()
        return self.resets - before

    def close(self) -> None:
        self.down()
        self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() under way
        self._listener.close()

    def freeze_on(self, pattern: bytes, occurrence: int = 1) -> None:
        """Freeze at the ``occurrence``-th client send that matches ``pattern``; with a group in
        ``pattern``, at the ``occurrence``-th with the same group (the same folder, say)."""
        self.frozen.clear()
        self._trigger = re.compile(pattern)
        self._occurrence = occurrence
        self._matches = collections.Counter()

    def throttle_every(self, n: int) -> None:
        """Answer every ``n``-th GET with HTTP 503 SlowDown instead of forwarding it (0: never)."""
        self._throttle_every = n

    def stall_on(self, pattern: bytes) -> None:
        """Silence the next connection whose client sends bytes that match ``pattern``: nothing
        more passes it either way, and it is not closed."""
        self._stall = re.compile(pattern)

    def freeze(self) -> None:
        """Stop all traffic now; connections are still accepted and kept open, silent."""
        self._flowing.clear()
        self.frozen.set()

    def thaw(self) -> None:
        self._trigger = None
        self._flowing.set()

    def _reset(self, connection: socket.socket) -> None:
        # SO_LINGER 0: close with a reset, not a graceful FIN. A close alone would not reach the
        # client: on Linux the socket lives on, silent, while its pump thread waits in recv(), so
        # the client would see a black hole, not a reset. shutdown(SHUT_RD) ends that recv() first
        # (and sends nothing), so the close is the last reference and sends the reset.
        try:
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            connection.shutdown(socket.SHUT_RD)
        except OSError:  # the peer has gone already
            pass
        connection.close()
        self.resets += 1

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            if self._down:
                self._reset(client)
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._connections |= {client, server}
            for source, target, from_client in ((client, server, True), (server, client, False)):
                chunks: queue.SimpleQueue = queue.SimpleQueue()
                threading.Thread(target=self._pump, args=(source, chunks, from_client), daemon=True).start()
                threading.Thread(target=self._deliver, args=(chunks, source, target), daemon=True).start()

    def _pump(self, source: socket.socket, chunks: queue.SimpleQueue, from_client: bool) -> None:
        """Read from ``source`` into ``chunks``, each with the time it is due on the other side."""
        try:
            while data := source.recv(65536):
                if from_client:
                    lines = _REQUEST_LINE.findall(data)
                    self.requests += lines
                    if self._throttled(lines):
                        source.sendall(_SLOW_DOWN)  # the GET has no body: nothing else to drop
                        continue
                stall = self._stall
                if from_client and stall is not None and stall.search(data):
                    self._stall = None
                    self._stalled.add(source)
                trigger = self._trigger
                match = trigger.search(data) if from_client and trigger is not None else None
                if match:
                    with self._lock:
                        key = match.group(1) if trigger.groups else None
                        self._matches[key] += 1
                        if self._matches[key] == self._occurrence:
                            self._flowing.clear()
                            self.frozen.set()
                self._flowing.wait()
                chunks.put((time.monotonic() + self.rtt_s / 2, data))
        except OSError:
            pass
        finally:
            chunks.put(None)

    def _throttled(self, lines: list[bytes]) -> bool:
        every = self._throttle_every
        with self._lock:
            gets = sum(line.startswith(b"GET ") for line in self.requests)
            if every and len(lines) == 1 and lines[0].startswith(b"GET ") and gets % every == 0:
                self.throttled += 1
                return True
        return False

    def _deliver(self, chunks: queue.SimpleQueue, source: socket.socket, target: socket.socket) -> None:
        """Send ``chunks`` to ``target`` in order, each once due; close both ends after the last."""
        try:
            while (item := chunks.get()) is not None:
                due, data = item
                time.sleep(max(0.0, due - time.monotonic()))
                if not self._stalled & {source, target}:
                    target.sendall(data)  # read while traffic flowed: delivered as it would have been at once
        except OSError:
            pass
        finally:
            for end in (source, target):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            with self._lock:
                self._connections -= {source, target}
