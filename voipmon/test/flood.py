"""A flood of idle TCP connections, as a process of its own: ``python -m voipmon.test.flood``.

It keeps ``--connections`` connections open to HOST:PORT without ever sending a byte, and
reopens each one as soon as the server drops it (or refuses it), for ``--seconds``. It runs
in its own process so that it does not compete with the reactor under test for the GIL.

A connection counts as open once the server's kernel answered; TCP keepalive probes (empty
segments, nothing reaches the server's application) every second find the ones the server
dropped without a word (an overflowing accept queue forgets a connection its client
believes open), and those are reopened too. At most ``--connecting`` attempts are in
progress at once.

It prints ``flooding: N connections`` once N connections have been opened and ``--settle``
seconds have passed since (so that every one is known to the server; a server that drops
them may never see N open at once),
a ``flood: ...`` line every second, and a last line ``flood done: {json}`` with its totals
(``opened``: connections that reached the server, ``dropped``: of them, how many the
server closed, ``failed``: connection attempts that failed), also when stopped by SIGTERM.
"""

from __future__ import annotations

import argparse
import errno
import json
import selectors
import signal
import socket
import sys
import time

_CONNECTED = object()


class Flood:
    def __init__(self, host: str, port: int, connections: int, connecting: int = 32) -> None:
        self.address = (host, port)
        self.connections = connections
        self.connecting_limit = connecting
        self.selector = selectors.DefaultSelector()
        self.open = 0
        self.connecting = 0
        self.waiting = connections          # connections to open when there is room
        self.opened = self.dropped = self.failed = 0
        self.max_open = 0
        self.stopped = False                # SIGTERM: stop now, print the totals

    def start_waiting(self) -> None:
        while self.waiting and self.connecting < self.connecting_limit:
            self.waiting -= 1
            self.start_one()

    def start_one(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 2)
        code = sock.connect_ex(self.address)
        if code not in (0, errno.EINPROGRESS):
            self.failed += 1
            sock.close()
            self.waiting += 1
            return
        self.connecting += 1
        self.selector.register(sock, selectors.EVENT_WRITE, None)

    def run(self, seconds: float, settle: float = 3.0) -> dict[str, int]:
        announced = False
        full_since: float | None = None    # when N connections had been opened
        end = time.monotonic() + seconds
        next_report = time.monotonic() + 1.0
        while True:
            now = time.monotonic()
            if now >= end or self.stopped:
                break
            if now >= next_report:
                next_report = now + 1.0
                print(f"flood: {self.open} open, {self.opened} opened, {self.dropped} dropped, "
                      f"{self.failed} failed", flush=True)
            self.start_waiting()
            for key, _events in self.selector.select(timeout=0.1):
                self.event(key)
            self.max_open = max(self.max_open, self.open)
            if full_since is None and self.opened >= self.connections:
                full_since = now
            if not announced and full_since is not None and now - full_since >= settle:
                announced = True
                print(f"flooding: {self.connections} connections ({self.open} open)",
                      flush=True)
        totals = {"opened": self.opened, "dropped": self.dropped, "failed": self.failed,
                  "open_at_end": self.open, "max_open": self.max_open}
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()
        return totals

    def event(self, key: selectors.SelectorKey) -> None:
        sock = key.fileobj
        if key.data is None:  # connecting
            self.connecting -= 1
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self.failed += 1
                self.reopen(sock, was_open=False)
                return
            self.opened += 1
            self.open += 1
            self.selector.modify(sock, selectors.EVENT_READ, _CONNECTED)
            return
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if not data:  # the server closed or reset it
            self.dropped += 1
            self.reopen(sock, was_open=True)
        # Anything the server says (a TLS alert, say) is read and ignored.

    def reopen(self, sock: socket.socket, was_open: bool) -> None:
        self.selector.unregister(sock)
        sock.close()
        if was_open:
            self.open -= 1
        self.waiting += 1
        self.start_waiting()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--connecting", type=int, default=32)
    parser.add_argument("--settle", type=float, default=3.0)
    options = parser.parse_args(argv)
    flood = Flood(options.host, options.port, options.connections, options.connecting)
    signal.signal(signal.SIGTERM, lambda number, frame: setattr(flood, "stopped", True))
    totals = flood.run(options.seconds, options.settle)
    print(f"flood done: {json.dumps(totals)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
