"""k4d_bringup.testing's safety net: children that a test's own clean-up never stopped are stopped by stop_all
(called by the root conftest when the run ends)."""
import sys


def test_stop_all_ends_children_left_running():
    from k4d_bringup.testing import start_process, stop_all, stop_process

    done = start_process([sys.executable, "-c", "print('quick')"])
    done.wait(timeout=30)
    left = start_process([sys.executable, "-c", "import time; time.sleep(120)"])
    assert left.poll() is None
    stopped = stop_all(timeout=5.0)
    assert left.poll() is not None  # ended, not orphaned
    assert len(stopped) == 1 and "time.sleep(120)" in stopped[0]
    assert stop_all() == []  # nothing twice
    stop_process(done)
