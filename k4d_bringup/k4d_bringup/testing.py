"""Helpers for tests that run a real ROS 2 graph (several processes over DDS).

Used by the packages' tests and the cross-package integration tests in ``tests/``.
"""
from __future__ import annotations

import json
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


class TwoHosts:
    """Two hosts on one machine: network namespaces joined by a veth pair, both ends shaped by ``tc tbf`` to
    ``rate`` (e.g. ``1gbit``); removed on exit. Linux, root, iproute2.

    ``server`` and ``client`` are ``(namespace, interface, address)``; ``wrap(host, cmd)`` runs ``cmd`` on that host
    and ``env(host, base)`` gives it the DDS settings of a two-machine deployment: UDPv4 only (shared memory would
    bypass the link), subnet discovery, the other host as static peer. ``bytes_moved()`` reads the link's counters,
    the proof that traffic crossed it."""

    def __init__(self, rate: str, subnet: str = "10.231.77"):
        tag = f"{os.getpid() % 100000}"
        self.rate = rate
        self.server = (f"k4d_gpu{tag}", f"k4dg{tag}", f"{subnet}.1")
        self.client = (f"k4d_robot{tag}", f"k4dr{tag}", f"{subnet}.2")

    @staticmethod
    def _ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, text=True)

    def __enter__(self) -> "TwoHosts":
        (ns_s, if_s, _), (ns_c, if_c, _) = self.server, self.client
        try:
            self._ip("netns", "add", ns_s)
            self._ip("netns", "add", ns_c)
            self._ip("link", "add", if_s, "type", "veth", "peer", "name", if_c)
            for ns, dev, addr in (self.server, self.client):
                self._ip("link", "set", dev, "netns", ns)
                self._ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
                self._ip("-n", ns, "link", "set", dev, "up")
                self._ip("-n", ns, "link", "set", "lo", "up")
                self._ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", dev)  # SPDP multicast leaves by the link
                subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate",
                                self.rate, "burst", "256kb", "latency", "50ms"], check=True, capture_output=True,
                               text=True)
        except (subprocess.CalledProcessError, FileNotFoundError) as exc:
            self.__exit__(None, None, None)
            detail = getattr(exc, "stderr", "") or str(exc)
            raise RuntimeError(f"cannot build two hosts from network namespaces (needs root, iproute2 and tc): "
                               f"{detail.strip()}") from exc
        return self

    def __exit__(self, *exc) -> None:
        for ns, _, _ in (self.server, self.client):
            try:
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)  # takes its end of the veth along
            except FileNotFoundError:  # no iproute2: nothing was made
                pass

    def wrap(self, host: tuple[str, str, str], cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", host[0], *cmd]

    def env(self, host: tuple[str, str, str], base: dict) -> dict:
        peer = self.client if host is self.server else self.server
        # no profile file: k4d's own (fastdds_large_data.xml) adds shared memory, which Fast DDS would use between
        # the namespaces (one machine id), bypassing the link
        env = {k: v for k, v in base.items() if k != "FASTDDS_DEFAULT_PROFILES_FILE"}
        return {**env, "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET", "ROS_STATIC_PEERS": peer[2],
                "FASTDDS_BUILTIN_TRANSPORTS": "UDPv4"}

    def describe(self) -> dict:
        """What the two hosts are, for a benchmark's record."""
        return {"link": f"veth between two network namespaces, tc tbf {self.rate} each way",
                "server": self.server[2], "client": self.client[2],
                "transport": "UDPv4 only (FASTDDS_BUILTIN_TRANSPORTS)",
                "discovery": "ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET, ROS_STATIC_PEERS=the other host"}

    def udp_receive_drops(self) -> dict:
        """Datagrams each host's kernel dropped for a full socket receive buffer (``Udp: RcvbufErrors``): DDS
        resends the fragments, so drops cost bytes and time but not correctness."""
        out = {}
        for name, (ns, _, _) in (("server", self.server), ("client", self.client)):
            lines = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"], check=True,
                                   capture_output=True, text=True).stdout.splitlines()
            head, vals = [ln.split()[1:] for ln in lines if ln.startswith("Udp:")][:2]
            out[name] = int(dict(zip(head, vals)).get("RcvbufErrors", 0))
        return out

    def bytes_moved(self) -> dict:
        """Bytes sent each way over the link so far (the veth counters of the server's end)."""
        ns, dev, _ = self.server
        out = subprocess.run(["ip", "-j", "-s", "-n", ns, "link", "show", "dev", dev], check=True,
                             capture_output=True, text=True).stdout
        stats = json.loads(out)[0]["stats64"]
        return {"server_to_client": int(stats["tx"]["bytes"]), "client_to_server": int(stats["rx"]["bytes"])}
