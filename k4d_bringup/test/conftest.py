"""k4d_bringup tests: import the real package when the repository root shadows it.

``python -m pytest`` from the repository root (and pytest's importlib mode, which names this module
``k4d_bringup.test....``) can bind ``k4d_bringup`` to the project folder ``k4d_bringup/`` (no
``__init__.py``): a namespace package without ``testing``, ``sim`` and the rest. Drop such a stand-in so
the real package is imported; node processes started by the tests run in a temporary folder.
"""
import sys
from pathlib import Path

_PROJECT = str(Path(__file__).resolve().parents[1])

if getattr(sys.modules.get("k4d_bringup"), "__file__", "") is None:
    for _name in [n for n in sys.modules if n == "k4d_bringup" or n.startswith("k4d_bringup.")]:
        if getattr(sys.modules[_name], "__file__", None) is None:
            del sys.modules[_name]
if _PROJECT not in sys.path:
    sys.path.append(_PROJECT)
