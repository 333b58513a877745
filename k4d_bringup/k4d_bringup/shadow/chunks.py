"""ChunkQueue: the bounded queue between the robot's action chunks and the (much slower) world model.

    q = ChunkQueue(capacity=2, policy="drop_oldest")
    skipped = q.push(chunk)        # list of chunks skipped by this push (0 or 1), to report as STATUS_SKIPPED
    chunk = q.pop()                # oldest waiting chunk, or None
    q.skipped                      # total skips so far

Policy when a chunk arrives and ``capacity`` chunks already wait (one more may be in flight elsewhere):
``drop_oldest`` skips the oldest waiting chunk and queues the new one (fresh behaviour is evaluated);
``drop_newest`` skips the arriving chunk (the evaluated chunks stay contiguous). ``capacity`` 0 holds
nothing: a chunk is evaluated only if the world model takes it at once (``push`` then returns it as skipped
unless the caller checked ``idle`` first and dispatched it directly).
"""
from __future__ import annotations

import collections
from typing import Any, Generic, Optional, TypeVar

from .config import QUEUE_POLICIES

T = TypeVar("T")


class ChunkQueue(Generic[T]):
    def __init__(self, capacity: int = 2, policy: str = "drop_oldest"):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0:
            raise ValueError(f"capacity must be an integer >= 0, got {capacity!r}")
        if policy not in QUEUE_POLICIES:
            raise ValueError(f"policy must be one of {list(QUEUE_POLICIES)}, got {policy!r}")
        self.capacity, self.policy = capacity, policy
        self._items: collections.deque = collections.deque()
        self.skipped = 0
        self.pushed = 0

    def __len__(self) -> int:
        return len(self._items)

    def push(self, item: T) -> list[T]:
        """Queue ``item``; returns the chunks skipped because the queue was full."""
        self.pushed += 1
        if len(self._items) < self.capacity:
            self._items.append(item)
            return []
        self.skipped += 1
        if self.policy == "drop_newest" or self.capacity == 0:
            return [item]
        dropped = self._items.popleft()
        self._items.append(item)
        return [dropped]

    def push_front(self, item: T) -> None:
        """Put back a chunk that was taken for the world model and must wait again (it keeps its turn; the queue
        may then hold one more than ``capacity`` until it is taken again, as it did while in flight)."""
        self._items.appendleft(item)

    def pop(self) -> Optional[T]:
        return self._items.popleft() if self._items else None

    def peek(self) -> Optional[T]:
        return self._items[0] if self._items else None

    def remove(self, item: Any) -> bool:
        try:
            self._items.remove(item)
            return True
        except ValueError:
            return False

    def items(self) -> list[T]:
        return list(self._items)
