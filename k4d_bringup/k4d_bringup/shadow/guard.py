"""ActuatorGuard: topics a shadow-mode node must never publish on (ROS-free).

    guard = ActuatorGuard(["/arm_controller/*", "/gripper*"], extra=[chunk_topic])
    guard.check("/k4d/shadow/result")          # fine
    guard.check("/arm_controller/joint_trajectory")   # ValueError

Shadow mode means the evaluated policy's outputs never reach the actuators (Autoware's trajectory_validator
shadow mode). The shadow node routes every ``create_publisher`` through ``check``, so a publisher on an
actuator topic cannot be created by mistake or by configuration; the tests inspect the live graph too.
Patterns are fnmatch globs matched against the fully resolved topic name (and action names for clients).
"""
from __future__ import annotations

import fnmatch
from typing import Iterable, Sequence


class ActuatorGuard:
    def __init__(self, patterns: Sequence[str], extra: Iterable[str] = ()):
        self.patterns = [p for p in list(patterns) + [e for e in extra if e] if p]

    def matches(self, topic: str) -> str:
        """The first pattern ``topic`` matches ('' if none)."""
        name = topic if topic.startswith("/") else "/" + topic
        for p in self.patterns:
            pat = p if p.startswith(("/", "*")) else "/" + p
            if fnmatch.fnmatchcase(name, pat):
                return p
        return ""

    def check(self, topic: str) -> str:
        """Return ``topic`` or raise ValueError when it is an actuator topic."""
        hit = self.matches(topic)
        if hit:
            raise ValueError(f"refusing to publish on '{topic}': it matches actuator pattern '{hit}' (shadow mode "
                             f"never commands the robot)")
        return topic
