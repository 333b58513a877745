"""k4d_kinematics tests: import the real package when the repository root shadows it.

Running pytest (or ``python -m``) from the repository root puts the root on sys.path, where the
project folder ``k4d_kinematics/`` (no ``__init__.py``) is a namespace package that hides the
editable install; ``k4d_kinematics.config`` then resolves to the YAML folder ``k4d_kinematics/config/``
instead of ``config.py``. A regular package anywhere on sys.path beats a namespace portion, so the
project folder is appended and any namespace stand-in is dropped. (Node processes started by the
tests run in a temporary folder, so they are not affected.)
"""
import sys
from pathlib import Path

_PROJECT = str(Path(__file__).resolve().parents[1])

if getattr(sys.modules.get("k4d_kinematics"), "__file__", "") is None:
    for _name in [n for n in sys.modules if n == "k4d_kinematics" or n.startswith("k4d_kinematics.")]:
        if getattr(sys.modules[_name], "__file__", None) is None:
            del sys.modules[_name]
if _PROJECT not in sys.path:
    sys.path.append(_PROJECT)
