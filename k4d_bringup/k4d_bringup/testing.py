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


def start_process(args: Sequence[str], env: dict | None = None, **kw) -> subprocess.Popen:
    """Start a child process in the current ROS domain (inherits ROS_DOMAIN_ID), output to pipes."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.Popen(list(args), env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


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
