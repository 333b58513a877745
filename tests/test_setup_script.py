# Copyright 2026 k4d developers. Apache-2.0.
"""scripts/setup.sh refuses to start the wheel install on a disk that cannot hold it, and says why."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _copy_setup(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    for req in ("requirements.txt", "requirements-ros.txt"):
        shutil.copy(ROOT / req, tmp_path / req)
    # an existing interpreter in .venv, so the script goes straight to the wheel step (no venv is created)
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    os.symlink(sys.executable, tmp_path / ".venv" / "bin" / "python")
    return tmp_path


@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("g++") is None,
                    reason="setup.sh would first install system packages")
def test_setup_stops_with_a_clear_message_when_the_disk_is_too_full(tmp_path):
    root = _copy_setup(tmp_path)
    env = {**os.environ, "K4D_MIN_FREE_GIB": str(10**7)}  # 10 PiB: more than any disk has free
    r = subprocess.run(["bash", str(root / "scripts" / "setup.sh")], cwd=root, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1
    assert "not enough disk space" in r.stderr and "MiB free under" in r.stderr
    assert "K4D_MIN_FREE_GIB" in r.stderr
    assert "installing pinned wheels" not in r.stderr  # it stopped before pip
    assert not list((root / ".venv").glob(".k4d-requirements-*"))  # nothing recorded as installed
