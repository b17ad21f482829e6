"""UDP port allocation for media sockets, from the configured range; every port is always given back."""

from __future__ import annotations

import socket
import threading

from voicebot.errors import MediaError


class PortAllocator:
    def __init__(self, start: int, end: int, host: str = "127.0.0.1") -> None:
        if not 0 < start <= end < 65536:
            raise MediaError(f"bad media port range {start}-{end}", code="media_port_range")
        self.start, self.end, self.host = start, end, host
        self._used: set[int] = set()
        self._next = start
        self._lock = threading.Lock()

    def bind(self) -> socket.socket:
        """A non-blocking UDP socket bound to a free port of the range (skips ports others hold)."""
        with self._lock:
            for _ in range(self.end - self.start + 1):
                port = self._next
                self._next = self.start if port >= self.end else port + 1
                if port in self._used:
                    continue
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    sock.bind((self.host, port))
                except OSError:
                    sock.close()
                    continue
                sock.setblocking(False)
                self._used.add(port)
                return sock
        raise MediaError(f"no free media port in {self.start}-{self.end}", code="media_ports_exhausted")

    def release(self, sock: socket.socket) -> None:
        with self._lock:
            try:
                port = sock.getsockname()[1]
            except OSError:
                port = None
            sock.close()
            if port is not None:
                self._used.discard(port)

    @property
    def in_use(self) -> int:
        with self._lock:
            return len(self._used)
