"""Shared tiny-model fixtures (CPU, float32), module-scoped because building a tiny pipeline takes ~1 s.

Import note: ``python -m pytest`` from the repository root puts the root on ``sys.path``. There the ROS package
folder ``k4d_worldmodel/`` (no ``__init__.py``) shadows the installed Python package as a namespace package, and
its data folders (``config/``, ``benchmarks/``) would shadow the modules ``k4d_worldmodel.config`` etc. We bind
``k4d_worldmodel`` to the real package before any test module imports it.
"""
import importlib.util
import sys
import warnings
from pathlib import Path

import pytest

warnings.filterwarnings("ignore", message=".*torchvision.*")


def _bind_real_package() -> None:
    current = sys.modules.get("k4d_worldmodel")
    if current is not None and getattr(current, "__file__", None):
        return  # already the real package
    pkg_dir = Path(__file__).resolve().parents[1] / "k4d_worldmodel"
    for name in [n for n in sys.modules if n.startswith("k4d_worldmodel.") and not n.startswith("k4d_worldmodel.test")]:
        del sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        "k4d_worldmodel", pkg_dir / "__init__.py", submodule_search_locations=[str(pkg_dir)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["k4d_worldmodel"] = module
    spec.loader.exec_module(module)


_bind_real_package()


@pytest.fixture(scope="module")
def pmcond_pipe():
    from k4d_worldmodel.tiny import build_tiny_pipeline

    return build_tiny_pipeline("pmcond", seed=0)


@pytest.fixture(scope="module")
def full_pipe():
    from k4d_worldmodel.tiny import build_tiny_pipeline

    return build_tiny_pipeline("full", seed=1)
