#!/usr/bin/env bash
# Build the ROS 2 part of what a GPU call carries for device_shadow_dds.sh: the cp312 runtime wheels of
# requirements-ros.txt and k4d_msgs built by colcon against them with a Python 3.12 (the GPU image's version),
# so that the imagine node can serve /k4d/imagine over DDS there.
#
#   K4D_PY312=/path/to/python3.12 k4d_worldmodel/scripts/build_ros_carry.sh [DEST]     # default <repo>/.ros312
#
# Needs a local CPython 3.12 with its headers (K4D_PY312, default: python3.12 on PATH), cmake and a C/C++
# compiler, and a package index with the ROS 2 Kilted wheels (the same as scripts/setup.sh). Work goes to
# $WORK (default /tmp/k4d_ros312). DEST ends up with about 46 MB: wheels only the runtime needs (no ament_cmake,
# colcon, numpy or test tools) and k4d_msgs_install.tgz.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PY312=${K4D_PY312:-python3.12}
WORK=${WORK:-/tmp/k4d_ros312}
DEST=${1:-$REPO/.ros312}
log() { printf '[build_ros_carry] %s\n' "$*" >&2; }
"$PY312" -c 'import sys; assert sys.version_info[:2] == (3, 12), sys.version' || {
  log "K4D_PY312 must be a Python 3.12 (the GPU image's); got $PY312"; exit 2; }
mkdir -p "$WORK/wheels"
V=$WORK/venv
[ -x "$V/bin/python" ] || "$PY312" -m venv "$V"
"$V/bin/python" -m pip install -q --upgrade pip==24.3.1 2> >(grep -v "is ignored" >&2)  # as scripts/setup.sh
log "downloading the cp312 wheels of requirements-ros.txt"
# numpy only for the build (its headers; the message modules then run on any numpy 2 of the GPU image)
"$V/bin/python" -m pip download -q -d "$WORK/wheels" -r "$REPO/requirements-ros.txt" numpy==2.2.6 2> >(grep -v "is ignored" >&2)
"$V/bin/python" -m pip install -q --no-index --find-links "$WORK/wheels" -r "$REPO/requirements-ros.txt" numpy==2.2.6 \
    2> >(grep -v "is ignored" >&2)
# The wheels' CMake include paths, repaired for this interpreter as scripts/setup.sh does for .venv.
"$REPO/scripts/repair_ros_cmake.sh" "$V"
log "colcon build of k4d_msgs with Python 3.12"
mkdir -p "$WORK/ws/src"
ln -sfn "$REPO/k4d_msgs" "$WORK/ws/src/k4d_msgs"
(cd "$WORK/ws" && CMAKE_PREFIX_PATH=$V AMENT_PREFIX_PATH=$V PATH=$V/bin:$PATH \
   "$V/bin/colcon" --log-base log build --packages-select k4d_msgs --event-handlers console_direct- \
   --cmake-args -DPython3_EXECUTABLE="$V/bin/python" -DBUILD_TESTING=OFF > build.log 2>&1) || {
  tail -30 "$WORK/ws/build.log" >&2; log "colcon build failed ($WORK/ws/build.log)"; exit 1; }
rm -rf "$DEST"
mkdir -p "$DEST"
# Runtime only: the build tools, the meta-packages (ros_kilted_*), numpy and the test tools stay behind.
skip='^(ros_ament_cmake|ros_ament_lint|ros_ament_cppcheck|ros_ament_cpplint|ros_ament_uncrustify|ros_ament_pep257'
skip+='|ros_ament_flake8|ros_ament_xmllint|ros_ament_copyright|colcon|catkin|empy|pytest|pygments|docutils|setuptools'
skip+='|distlib|numpy|ros_gtest|ros_gmock|ros_google|ros_uncrustify|pluggy|iniconfig|packaging|notify2|coverage'
skip+='|tzdata|ros_kilted_)'
for f in "$WORK/wheels"/*.whl; do
  b=$(basename "$f")
  [[ $b =~ $skip ]] || cp "$f" "$DEST/"
done
tar -C "$WORK/ws/install" -czf "$DEST/k4d_msgs_install.tgz" k4d_msgs
log "$(ls "$DEST" | wc -l) files, $(du -sh "$DEST" | cut -f1) in $DEST"
