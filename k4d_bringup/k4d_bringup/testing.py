"""Helpers for tests that run a real ROS 2 graph (several processes over DDS).

Used by the packages' tests and the cross-package integration tests in ``tests/``.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Callable, Sequence


def spin_until(node, predicate: Callable[[], bool], timeout: float = 20.0, executor=None) -> bool:
    """Spin ``node`` (or ``executor``) until ``predicate()`` is true or ``timeout`` seconds pass."""
    import rclpy

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if executor is not None:
            executor.spin_once(timeout_sec=0.05)
        else:
            rclpy.spin_once(node, timeout_sec=0.05)
    return predicate()


_STARTED: list[subprocess.Popen] = []


def start_process(args: Sequence[str], env: dict | None = None, **kw) -> subprocess.Popen:
    """Start a child process in the current ROS domain (inherits ROS_DOMAIN_ID), output to pipes. It is
    remembered, so that ``stop_all`` can end it if its test's own clean-up never ran."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    proc = subprocess.Popen(list(args), env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **kw)
    _STARTED[:] = [p for p in _STARTED if p.poll() is None] + [proc]
    return proc


def stop_all(timeout: float = 5.0) -> list[str]:
    """Stop every child ``start_process`` started that still runs (the test run's safety net: a fixture that
    failed half-way through its set-up must not leave nodes publishing on the machine); returns their commands."""
    left = [p for p in _STARTED if p.poll() is None]
    for p in left:
        stop_process(p, timeout)
    _STARTED.clear()
    return [" ".join(map(str, p.args[:3])) for p in left]


def python_process(code: str, **kw) -> subprocess.Popen:
    """Start ``python -c code`` with this interpreter."""
    return start_process([sys.executable, "-c", code], **kw)


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> str:
    """Stop a child (SIGINT, then SIGKILL) and return its output."""
    if proc.poll() is None:
        proc.send_signal(2)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    out = proc.stdout.read() if proc.stdout else ""
    return out or ""
