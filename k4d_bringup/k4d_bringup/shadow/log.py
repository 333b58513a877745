"""Durable append-only JSONL log of shadow results.

    log = ShadowLog("out/shadow/log.jsonl")      # creates the folder; appends to an existing log
    log.append({"kind": "chunk", ...})           # one line, flushed and fsync'd before returning
    records = read_log("out/shadow/log.jsonl")   # list of dicts; a torn last line is skipped

Crash safety: every record is one ``json.dumps`` line written with a single ``os.write`` on an
``O_APPEND`` descriptor, followed by ``os.fsync``. A crash (power loss, SIGKILL) can only tear the line
being written; all earlier lines are on disk. ``read_log`` skips a torn or unparsable LAST line (counted
in ``read_log(..., stats=...)``) and raises on a bad line in the middle, which is corruption, not a crash.
On re-opening, a torn last line is cut off (its bytes are kept in ``<log>.torn``), so the records written
after a restart can never follow a fragment; a last record that is whole but lacks its newline keeps it.
NaN / inf floats are written as ``null`` (strict JSON).
"""
from __future__ import annotations

import json
import math
import os
import threading
from pathlib import Path
from typing import Any, Optional

LOG_VERSION = 1


def _clean(value: Any) -> Any:
    """JSON-safe copy: non-finite floats -> None, numpy scalars/arrays -> Python."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalar or array
        return _clean(value.tolist())
    return value


class ShadowLog:
    """Append-only JSONL file; ``append`` returns once the record is on disk (fsync)."""

    def __init__(self, path: str | os.PathLike, fsync: bool = True):
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self._lock = threading.Lock()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.count = 0
        self.torn_bytes = self._repair_tail()

    def _repair_tail(self) -> int:
        """Make the file end on a record boundary after a crash; returns the number of torn bytes cut off.
        A torn fragment left in place would sit mid-file once new records follow it, where ``read_log`` can
        only tell it from corruption by guessing (a tear right after a nested ``}`` looks like a record's end)."""
        size = os.fstat(self._fd).st_size
        if not size:
            return 0
        with open(self.path, "rb") as fh:
            fh.seek(max(0, size - (1 << 20)))
            tail = fh.read()
            if b"\n" not in tail and len(tail) < size:  # a last line over 1 MiB: read it whole
                fh.seek(0)
                tail = fh.read()
        if tail.endswith(b"\n"):
            return 0
        start = tail.rfind(b"\n") + 1  # 0 when the tail holds no newline: the fragment is the whole tail read
        fragment = tail[start:]
        try:
            whole = isinstance(json.loads(fragment.decode("utf-8")), dict)
        except (ValueError, UnicodeDecodeError):
            whole = False
        if whole:  # the record was written, only its newline was not
            os.write(self._fd, b"\n")
            os.fsync(self._fd)
            return 0
        with open(self.path.with_name(self.path.name + ".torn"), "ab") as fh:
            fh.write(fragment + b"\n")
        os.truncate(self.path, size - len(fragment))
        os.fsync(self._fd)
        return len(fragment)

    def append(self, record: dict) -> None:
        line = (json.dumps(_clean({"v": LOG_VERSION, **record}), allow_nan=False, separators=(",", ":")) + "\n")
        data = line.encode()
        with self._lock:
            if self._fd < 0:
                raise ValueError(f"shadow log {self.path} is closed")
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            if self.fsync:
                os.fsync(self._fd)
            self.count += 1

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_log(path: str | os.PathLike, stats: Optional[dict] = None) -> list[dict]:
    """All records of a shadow log, in order. A torn/unparsable last line (a crash mid-write) is skipped and
    counted in ``stats['skipped_torn']``; a bad line elsewhere raises ValueError naming its line number."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"shadow log not found: {path}")
    raw = path.read_bytes().split(b"\n")
    lines = [(i + 1, ln) for i, ln in enumerate(raw) if ln.strip()]
    out, torn = [], 0
    for k, (lineno, ln) in enumerate(lines):
        try:
            rec = json.loads(ln.decode("utf-8"))
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as exc:
            # The last line, or a torn line (no closing brace) followed by records written after a restart.
            if k == len(lines) - 1 or not ln.rstrip().endswith(b"}"):
                torn += 1
                continue
            raise ValueError(f"{path}:{lineno}: corrupt record ({exc})") from None
        out.append(rec)
    if stats is not None:
        stats["skipped_torn"] = torn
        stats["records"] = len(out)
    return out
