"""Request rate limits (token buckets), the budget of failed authentications per client address, and a
short-lived cache of key lookups.

The buckets live in Redis when the service has a Redis broker, so every API process sharing it spends one budget
per client; without Redis (the embedded shape, one API process) they live in the process.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import anyio.to_thread

from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """`rate` requests per second sustained, `burst` at once. `acquire` returns 0 when the request may go on,
    else the seconds to wait before a retry can succeed; with `spend=False` it only looks (a full or unknown
    bucket is 0) and takes nothing. A request may cost more than one (`cost`: a sweep's cells), at most `burst`."""

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str, spend: bool = True, cost: int = 1) -> int:
        cost = max(1, min(cost, self.burst))
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                if not spend:
                    return 0
                if len(self._buckets) >= self.max_keys:
                    self._buckets.clear()
                bucket = self._buckets[key] = _Bucket(float(self.burst), now)
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            if bucket.tokens >= cost:
                if spend:
                    bucket.tokens -= cost
                return 0
            return max(1, math.ceil((cost - bucket.tokens) / self.rate))


class Limiter(Protocol):
    rate: float
    burst: int

    async def check(self, key: str, spend: bool = True, gate: Gate | None = None, cost: int = 1) -> int:
        """0 when the request may go on, else the seconds to wait before a retry can succeed. `spend=False`
        only looks: it takes nothing from the bucket. With a `gate` (another limiter's bucket, only looked at)
        the answer is minus the gate's wait when that bucket is empty, and nothing is spent. `cost`: how many
        requests this one counts as (at most the burst)."""
        ...

    def close(self) -> None: ...


Gate = tuple[Limiter, str]


class LocalLimiter(RateLimiter):
    """The in-process buckets, for one API process."""

    async def check(self, key: str, spend: bool = True, gate: Gate | None = None, cost: int = 1) -> int:
        if gate is not None:
            blocked = await gate[0].check(gate[1], spend=False)
            if blocked:
                return -blocked
        return self.acquire(key, spend, cost)

    def close(self) -> None:
        pass


# One token bucket per key in a Redis hash {tokens, at}, refilled by `rate` per second up to `burst`, on the Redis
# server's clock (TIME), in one atomic script: API processes on several hosts spend the same budget. ARGV[3] is
# what the request costs (1, or a sweep's cells); with ARGV[3] = 0 the script only looks at the bucket and writes
# nothing. KEYS[2], when given, is a gate with its
# own rate and burst (ARGV[4], ARGV[5]) that is only looked at: while it is empty the script answers minus its
# wait and spends nothing (two limits in one round trip).
_BUCKET_LUA = """
local function refilled(key, rate, burst, now)
  local state = redis.call('HMGET', key, 'tokens', 'at')
  local tokens = tonumber(state[1])
  local at = tonumber(state[2])
  if tokens == nil or at == nil then
    return burst
  end
  return math.min(burst, tokens + math.max(0, now - at) * rate)
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
if #KEYS > 1 then
  local gate_rate = tonumber(ARGV[4])
  local gate_tokens = refilled(KEYS[2], gate_rate, tonumber(ARGV[5]), now)
  if gate_tokens < 1 then
    return -math.max(1, math.ceil((1 - gate_tokens) / gate_rate))
  end
end
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tokens = refilled(KEYS[1], rate, burst, now)
local cost = math.max(1, tonumber(ARGV[3]))
local wait = 0
if tokens < cost then
  wait = math.max(1, math.ceil((cost - tokens) / rate))
end
if ARGV[3] == '0' then
  return wait
end
if wait == 0 then
  tokens = tokens - cost
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'at', string.format('%.6f', now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return wait
"""
KEY_PREFIX = "twossp:ratelimit:"
REDIS_TIMEOUT_S = 0.5
# the blocking Redis calls run on threads of their own, never on the request handlers' threads
_REDIS_THREADS = anyio.CapacityLimiter(32)


class RedisLimiter:
    """The token buckets in Redis. If Redis cannot be reached the process's own buckets decide meanwhile (the
    limit is then per process again, as it is while the broker is down anyway)."""

    def __init__(self, url: str, rate: float, burst: int) -> None:
        import redis

        self.rate, self.burst = rate, burst
        self._client = redis.Redis.from_url(
            url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S, health_check_interval=30
        )
        self._script: Any = self._client.register_script(_BUCKET_LUA)
        self.fallback = LocalLimiter(rate, burst)
        self._warned_at = 0.0

    def _check(self, key: str, spend: bool, gate: tuple[RedisLimiter, str] | None, cost: int = 1) -> int:
        keys = [KEY_PREFIX + key]
        args: list[Any] = [repr(float(self.rate)), self.burst, max(1, min(cost, self.burst)) if spend else 0]
        if gate is not None:
            keys.append(KEY_PREFIX + gate[1])
            args += [repr(float(gate[0].rate)), gate[0].burst]
        return int(self._script(keys=keys, args=args))

    async def check(self, key: str, spend: bool = True, gate: Gate | None = None, cost: int = 1) -> int:
        redis_gate: tuple[RedisLimiter, str] | None = None
        if gate is not None:
            if isinstance(gate[0], RedisLimiter):
                redis_gate = (gate[0], gate[1])
            else:  # a gate elsewhere: looked at first
                blocked = await gate[0].check(gate[1], spend=False)
                if blocked:
                    return -blocked
        try:
            return await anyio.to_thread.run_sync(self._check, key, spend, redis_gate, cost, limiter=_REDIS_THREADS)
        except Exception as exc:  # redis errors come in several types; the request must not fail for it
            if time.monotonic() - self._warned_at > 60:
                self._warned_at = time.monotonic()
                log.warning("rate limits fall back to this process (Redis: %s: %s)", type(exc).__name__, exc)
            local_gate = None if redis_gate is None else (redis_gate[0].fallback, redis_gate[1])
            return await self.fallback.check(key, spend, local_gate, cost)

    def close(self) -> None:
        self._client.close()


def make_limiter(broker_url: str | None, rate: float, burst: int) -> Limiter:
    """Shared through Redis when the broker is Redis, else per process."""
    if broker_url is not None and broker_url.startswith(("redis://", "rediss://")):
        return RedisLimiter(broker_url, rate, burst)
    return LocalLimiter(rate, burst)


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


@dataclass
class Limits:
    """One API process's limits: `requests` per API key (per client address for the dashboard),
    `auth_failures` per client address (missing or wrong API keys), and the cache of key lookups."""

    requests: Limiter
    auth_failures: Limiter
    keys: KeyCache

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            requests=make_limiter(settings.broker_url, settings.rate_limit_per_s, settings.rate_limit_burst),
            auth_failures=make_limiter(
                settings.broker_url, settings.auth_failure_rate_per_s, settings.auth_failure_burst
            ),
            keys=KeyCache(settings.auth_cache_s),
        )

    def close(self) -> None:
        self.requests.close()
        self.auth_failures.close()
