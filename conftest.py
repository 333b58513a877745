"""Repository-wide pytest set-up: an isolated ROS 2 graph per test run.

Every test run gets its own ``ROS_DOMAIN_ID`` (unique per run: drawn from the run's pid and clock and
reserved with a lock file, so parallel runs on one machine do not see each other), and DDS discovery
is kept on this host. Child processes inherit both.
"""
import fcntl
import os
import random
import time

_LOCKS = []


def _reserve_domain_id() -> int:
    rng = random.Random(os.getpid() ^ time.time_ns())
    candidates = list(range(1, 101))
    rng.shuffle(candidates)
    os.makedirs("/tmp/k4d-ros-domains", exist_ok=True)
    for d in candidates:
        fh = open(f"/tmp/k4d-ros-domains/{d}.lock", "w")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            continue
        _LOCKS.append(fh)  # held until the run ends
        return d
    raise RuntimeError("no free ROS_DOMAIN_ID in 1..100")


def pytest_configure(config):
    if "K4D_TEST_DOMAIN_ID" not in os.environ:
        os.environ["K4D_TEST_DOMAIN_ID"] = str(_reserve_domain_id())
    os.environ["ROS_DOMAIN_ID"] = os.environ["K4D_TEST_DOMAIN_ID"]
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("MUJOCO_GL", "osmesa")


def pytest_report_header(config):
    return f"ROS_DOMAIN_ID={os.environ.get('ROS_DOMAIN_ID')} (unique to this run)"
