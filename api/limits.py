"""Per-API-key request rate limits (token buckets, per API process) and a short-lived cache of key lookups."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """`rate` requests per second sustained, `burst` at once. `acquire` returns 0 when the request may go on,
    else the seconds to wait before a retry can succeed."""

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str) -> int:
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) >= self.max_keys:
                    self._buckets.clear()
                bucket = self._buckets[key] = _Bucket(float(self.burst), now)
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0
            return max(1, math.ceil((1.0 - bucket.tokens) / self.rate))


class KeyCache:
    """key hash -> (user id, user name) for `ttl_s` seconds, so a burst of requests with one key costs one lookup.
    A revoked key keeps working for at most `ttl_s` in each API process (0 disables the cache)."""

    def __init__(self, ttl_s: float, max_keys: int = 100_000) -> None:
        self.ttl_s, self.max_keys = ttl_s, max_keys
        self._entries: dict[str, tuple[tuple[str, str], float]] = {}
        self._lock = threading.Lock()

    def get(self, key_hash: str) -> tuple[str, str] | None:
        if self.ttl_s <= 0:
            return None
        with self._lock:
            entry = self._entries.get(key_hash)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def put(self, key_hash: str, user: tuple[str, str]) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            if len(self._entries) >= self.max_keys:
                self._entries.clear()
            self._entries[key_hash] = (user, time.monotonic() + self.ttl_s)
