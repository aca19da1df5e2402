"""Which teacher server each path goes to, when several serve the same model.

A path sticks to one server for its whole life, so the prefix it re-sends every step stays in that
server's prefix cache. A joining path goes to the live server holding the fewest live paths (ties:
the lowest index), then stays there. A server that fails (`ServerUnavailable` after its retries) is
marked down for good: each of its paths moves, when it next asks, to the least-loaded live server,
and stays there. Nothing here talks to a server; the teacher session asks `server_of` and reports
`failed`. Thread-safe: a step's requests run on many threads at once.
"""

from __future__ import annotations

import threading


class NoServerLeft(ConnectionError):
    """Every server has failed."""


class Router:
    def __init__(self, n_servers: int):
        if n_servers < 1:
            raise ValueError(f"a router needs at least one server, got {n_servers}")
        self.load = [0] * n_servers  # live paths per server
        self.down: set[int] = set()
        self.moved = 0  # paths moved off a failed server
        self._lock = threading.Lock()

    def _least_loaded(self) -> int:
        live = [s for s in range(len(self.load)) if s not in self.down]
        if not live:
            raise NoServerLeft(f"all {len(self.load)} teacher servers failed")
        return min(live, key=lambda s: (self.load[s], s))

    def join(self, n: int) -> list[int]:
        """The servers of `n` joining paths, each to the least-loaded live server in turn."""
        with self._lock:
            out = []
            for _ in range(n):
                server = self._least_loaded()
                self.load[server] += 1
                out.append(server)
            return out

    def leave(self, servers: list[int]) -> None:
        """Paths on `servers` have ended."""
        with self._lock:
            for server in servers:
                self.load[server] -= 1

    def server_of(self, server: int) -> int:
        """Where a path assigned to `server` goes now: there, unless it is down (then it moves)."""
        with self._lock:
            if server not in self.down:
                return server
            target = self._least_loaded()
            self.load[server] -= 1
            self.load[target] += 1
            self.moved += 1
            return target

    def failed(self, server: int) -> None:
        with self._lock:
            self.down.add(server)
