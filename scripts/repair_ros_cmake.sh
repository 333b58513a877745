#!/usr/bin/env bash
# Repair the ROS 2 wheels' exported CMake targets inside one virtual environment (files in VENV only).
# The wheels name include directories of the machine they were built on (/opt/python/cpXY-cpXY/...); point
# them at VENV's interpreter and numpy, so that colcon can build interface packages against them.
#   scripts/repair_ros_cmake.sh VENV          (used by scripts/setup.sh and build_ros_carry.sh)
set -euo pipefail
VENV=${1:?usage: repair_ros_cmake.sh VENV}
PYINC=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
NPINC=$("$VENV/bin/python" -c 'import numpy; print(numpy.get_include())')
mapfile -t bad < <(grep -rl '/opt/python/cp3' "$VENV/share" --include='*.cmake' 2>/dev/null || true)
if [ ${#bad[@]} -gt 0 ]; then
  printf '[k4d setup] %s\n' "repairing CMake paths in ${#bad[@]} files" >&2
  sed -i -E \
    -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/_core/include#${NPINC}#g" \
    -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/include/python3\.[0-9]+#${PYINC}#g" "${bad[@]}"
fi
