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


def _import_real_packages() -> None:
    """Import the three Python packages before any test module.

    With pytest's importlib mode, a test module ``k4d_worldmodel/test/test_x.py`` is imported as
    ``k4d_worldmodel.test.test_x``; if ``k4d_worldmodel`` were not imported yet, the project folder of that
    name (no ``__init__.py``) would stand in for it as a namespace package and hide the real modules.
    """
    import importlib

    for name in ("k4d_kinematics", "k4d_worldmodel", "k4d_bringup"):
        module = importlib.import_module(name)
        if getattr(module, "__file__", None) is None:
            raise RuntimeError(f"{name} resolved to the folder {list(module.__path__)}, not the installed package: "
                               "run scripts/setup.sh (editable installs in compat mode)")


# At import of this root conftest, before pytest imports any package's own test/conftest.py.
_import_real_packages()


def pytest_configure(config):
    if "K4D_TEST_DOMAIN_ID" not in os.environ:
        os.environ["K4D_TEST_DOMAIN_ID"] = str(_reserve_domain_id())
    os.environ["ROS_DOMAIN_ID"] = os.environ["K4D_TEST_DOMAIN_ID"]
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("MUJOCO_GL", "osmesa")


def pytest_sessionfinish(session, exitstatus):
    """Stop the child processes a failed fixture left running (``k4d_bringup.testing.stop_all``)."""
    import sys

    testing = sys.modules.get("k4d_bringup.testing")
    if testing is not None:
        left = testing.stop_all()
        if left:
            print(f"\nconftest: stopped {len(left)} child process(es) left running: {left}")


def pytest_report_header(config):
    return f"ROS_DOMAIN_ID={os.environ.get('ROS_DOMAIN_ID')} (unique to this run)"
