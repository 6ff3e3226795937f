"""promptd's own Redis keys beside Celery's: locks, queued marks, crash counts, heartbeats.

Per image (by ``ImageKey.digest``), under the queue name as prefix:

- ``lock``: redis-py's ``Lock`` (SET NX PX with a token; extend and release only by the
  holder). A worker takes it before admitting the image; ``Heartbeat`` extends it while the
  worker works, and the worker checks it still owns it before writing.
- ``queued``: set by the producer when it sends the image (SET NX, so a rescan does not send
  it twice), deleted when the work ends. While a worker holds the image its lifetime follows
  the lock's, so a dead worker's mark lapses and a later scan sends the image again; a mark
  never taken lapses after ``queued_ttl_s``.
- ``dirty``: the producer saw the image change while it was in hand: send it once more.
- ``recheck`` (one sorted set): images a worker turned away because their lock was held, to
  be looked at again by the producer once the holder should be done; if the holder died (its
  lock and mark lapse), the producer sends the image again without waiting for a full scan.
- ``crashes``: incremented when a worker starts on the image, cleared when it ends without its
  process dying; a count of 2 on arrival means two workers died on it: quarantine.

Per worker: a hash with its host, pid, counts and last heartbeat, expiring when it stops.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import structlog
from redis import Redis
from redis.exceptions import LockError, RedisError
from redis.lock import Lock

from daemon.distributed.keys import BadKey, ImageKey, key_from_message

log = structlog.get_logger("promptd.distributed")
CRASH_TTL_S = 7 * 86400


class Coordinator:
    """The per-image and per-worker keys of one promptd queue."""

    def __init__(self, client: Redis, prefix: str, *, queued_ttl_s: float) -> None:
        self.client = client
        self.prefix = prefix
        self.queued_ttl = max(1, int(queued_ttl_s))

    def _key(self, kind: str, key: ImageKey) -> str:
        return f"{self.prefix}:{kind}:{key.digest}"

    # --- the producer's marks ------------------------------------------------------------------

    def mark_queued(self, key: ImageKey) -> bool:
        """Note that ``key`` is being sent; False if it is already queued or in hand."""
        return bool(
            self.client.set(self._key("queued", key), key.name, nx=True, ex=self.queued_ttl)
        )

    def unmark(self, key: ImageKey) -> None:
        """Forget the queued mark (the send failed, or the work ended)."""
        self.client.delete(self._key("queued", key))

    def note_changed(self, key: ImageKey) -> None:
        """The image changed while queued or in hand: if in hand, it is sent once more after."""
        if self.client.exists(self._key("lock", key)):
            self.client.set(self._key("dirty", key), "1", ex=self.queued_ttl)

    def in_hand(self, key: ImageKey) -> bool:
        """Some worker holds ``key``'s lock."""
        return bool(self.client.exists(self._key("lock", key)))

    def mark_left_s(self, key: ImageKey) -> int:
        """Seconds the queued mark still lives; -2 when there is none."""
        return int(self.client.ttl(self._key("queued", key)))

    def recheck_later(self, key: ImageKey, delay_s: float) -> None:
        """Ask the producer to look at ``key`` again in ``delay_s`` seconds."""
        member = json.dumps(key.to_message(), ensure_ascii=True, sort_keys=True)
        self.client.zadd(f"{self.prefix}:recheck", {member: time.time() + delay_s})

    def due_rechecks(self, limit: int = 100) -> list[ImageKey]:
        """The keys whose recheck time has come (taken off the set)."""
        name = f"{self.prefix}:recheck"
        members = self.client.zrangebyscore(name, "-inf", time.time(), start=0, num=limit)
        found = []
        for member in members:
            if not isinstance(member, (bytes, str)):
                continue
            if self.client.zrem(name, member):
                try:
                    found.append(key_from_message(json.loads(member)))
                except (ValueError, BadKey):
                    continue  # not ours: dropped
        return found

    def follow_holder(self, key: ImageKey, ttl_s: float) -> None:
        """While a worker holds ``key``, its queued mark lives only as long as the lock would."""
        self.client.expire(self._key("queued", key), max(1, int(ttl_s)))

    def finish(self, key: ImageKey, *, keep_queued: bool = False) -> bool:
        """The work on ``key`` ended; True when it changed meanwhile and must be sent again
        (its mark is then kept, refreshed)."""
        dirty = self.client.getdel(self._key("dirty", key))
        if dirty or keep_queued:
            self.client.set(self._key("queued", key), key.name, ex=self.queued_ttl)
        else:
            self.unmark(key)
        return bool(dirty)

    # --- crash counts ------------------------------------------------------------------------

    def crashes(self, key: ImageKey) -> int:
        """How many workers died with ``key`` in hand since it last ended cleanly."""
        value = self.client.get(self._key("crashes", key))
        return int(value) if value else 0

    def started(self, key: ImageKey) -> None:
        """A worker starts on ``key`` (counts as a crash unless ``ended`` follows)."""
        name = self._key("crashes", key)
        pipe = self.client.pipeline()
        pipe.incr(name)
        pipe.expire(name, CRASH_TTL_S)
        pipe.execute()

    def ended(self, key: ImageKey) -> None:
        """The work on ``key`` ended without its process dying."""
        self.client.delete(self._key("crashes", key))

    # --- the lock ----------------------------------------------------------------------------

    def lock(self, key: ImageKey, timeout_s: float) -> Lock:
        """The image's lock (not yet taken); usable from the heartbeat thread too."""
        return Lock(self.client, self._key("lock", key), timeout=timeout_s, thread_local=False)

    def release_for(self, key: ImageKey, token: str) -> bool:
        """Release ``key``'s lock if ``token`` still holds it (a dead worker process's lock)."""
        lock = self.lock(key, 1)
        lock.local.token = token.encode()
        try:
            lock.release()
        except (LockError, RedisError):
            return False
        return True

    # --- workers -----------------------------------------------------------------------------

    def worker_key(self, name: str) -> str:
        """The hash of worker ``name``."""
        return f"{self.prefix}:worker:{name}"

    def beat(self, name: str, fields: dict[str, Any], ttl_s: float) -> None:
        """Worker ``name`` is alive: update its hash and let it expire unless renewed."""
        worker = self.worker_key(name)
        pipe = self.client.pipeline()
        pipe.hset(worker, mapping={k: str(v) for k, v in fields.items()})
        pipe.expire(worker, max(1, int(ttl_s)))
        pipe.execute()

    def count(self, name: str, outcome: str) -> None:
        """One more image with ``outcome`` done by worker ``name``."""
        self.client.hincrby(self.worker_key(name), outcome, 1)

    def workers(self) -> list[dict[str, str]]:
        """Every worker seen within its heartbeat's lifetime."""
        found = []
        for name in sorted(self.client.scan_iter(match=f"{self.prefix}:worker:*", count=100)):
            fields = self.client.hgetall(name)
            if fields:
                found.append({_text(k): _text(v) for k, v in fields.items()})
        return found


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class Heartbeat:
    """Extends an image's lock (and its queued mark) every third of the lock's lifetime."""

    def __init__(self, coord: Coordinator, key: ImageKey, lock: Lock, timeout_s: float) -> None:
        self._coord, self._key, self._lock = coord, key, lock
        self._timeout = timeout_s
        self._stop = threading.Event()
        self.lost = False
        self._thread = threading.Thread(target=self._run, name="promptd-lock", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self._timeout / 3):
            try:
                self._lock.reacquire()
                self._coord.follow_holder(self._key, self._timeout * 2)
            except LockError:
                self.lost = True
                log.warning("lock_lost", image=self._key.name)
                return
            except RedisError as exc:  # the broker is away: the next beat tries again
                log.warning("lock_extend_failed", image=self._key.name, error=str(exc))

    def owned(self) -> bool:
        """The lock is still ours (checked just before the sidecars are written)."""
        if self.lost:
            return False
        try:
            return bool(self._lock.owned())
        except RedisError:
            return False
