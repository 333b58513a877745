#!/usr/bin/env bash
# Set up k4d on a fresh Debian 12/13 machine without a ROS distro (idempotent; quick the second time).
#   1. system packages (compiler, cmake, OSMesa for headless MuJoCo rendering) when missing;
#   2. .venv/ with pinned ROS 2 Kilted wheels and Python dependencies;
#   3. repair of the wheels' CMake include paths (inside .venv only);
#   4. colcon build of ros2_ws (k4d_msgs + the three Python packages);
#   5. k4d_msgs and the Python packages made importable from .venv without sourcing.
# Usage: scripts/setup.sh [--force]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
PY="${K4D_PYTHON:-python3}"
FORCE=0; [ "${1:-}" = "--force" ] && FORCE=1
log() { printf '[k4d setup] %s\n' "$*" >&2; }
t0=$(date +%s)

# ---- 1. system packages ------------------------------------------------------------------
need=()
command -v cmake >/dev/null || need+=(cmake)
command -v g++ >/dev/null || need+=(g++)
command -v make >/dev/null || need+=(make)
"$PY" -c 'import sysconfig,os,sys; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"],"Python.h")) else 1)' || need+=(python3-dev)
"$PY" -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
ldconfig -p | grep -q libOSMesa.so || need+=(libosmesa6)
ldconfig -p | grep -q 'libGL.so.1' || need+=(libgl1)
if [ ${#need[@]} -gt 0 ]; then
  log "installing system packages: ${need[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# ---- 2. venv + pinned wheels ----------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  "$PY" -m venv "$VENV"
fi
REQ_HASH=$(cat requirements.txt requirements-ros.txt | sha256sum | cut -c1-16)
STAMP="$VENV/.k4d-requirements-$REQ_HASH"
if [ $FORCE = 1 ] || [ ! -f "$STAMP" ]; then
  # The wheels unpack to about 2.4 GiB in .venv (torch alone is 1 GiB) and pip stages them in $TMPDIR first.
  # Say so before pip dies half-way with "[Errno 28] No space left on device". K4D_MIN_FREE_GIB=0 skips it.
  MIN_GIB="${K4D_MIN_FREE_GIB:-3}"
  for d in "$VENV" "${TMPDIR:-/tmp}"; do
    free_kib=$(df -Pk "$d" 2>/dev/null | awk 'NR==2 {print $4}')
    if [ -n "$free_kib" ] && [ "$free_kib" -lt $(( MIN_GIB * 1024 * 1024 )) ]; then
      log "not enough disk space: $(( free_kib / 1024 )) MiB free under $d, the install needs about ${MIN_GIB} GiB"
      log "free some space (old clones, .venv copies, out/ folders) or set K4D_MIN_FREE_GIB to override"
      exit 1
    fi
  done
  log "installing pinned wheels (ROS 2 Kilted + Python deps)"
  "$VENV/bin/python" -m pip install -q --upgrade pip==24.3.1 >/dev/null
  "$VENV/bin/python" -m pip install -q -r requirements-ros.txt -r requirements.txt 2> >(grep -v "is ignored: it is neither" >&2)
  rm -f "$VENV"/.k4d-requirements-*; touch "$STAMP"
fi

# ---- 3. repair the wheels' CMake include paths ---------------------------------------------
# The wheels' exported targets name include dirs of the machine they were built on
# (/opt/python/cpXY-cpXY/...). Point them at this interpreter and this numpy (files in .venv only).
"$ROOT/scripts/repair_ros_cmake.sh" "$VENV"

# ---- 4. colcon build ---------------------------------------------------------------------
export CMAKE_PREFIX_PATH="$VENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export PATH="$VENV/bin:$PATH"
SRC_HASH=$(cat k4d_msgs/CMakeLists.txt k4d_msgs/package.xml k4d_msgs/msg/* k4d_msgs/action/* \
  k4d_*/package.xml k4d_*/setup.py k4d_*/setup.cfg 2>/dev/null | sha256sum | cut -c1-16)
BSTAMP="$ROOT/ros2_ws/install/.k4d-build-$SRC_HASH"
if [ $FORCE = 1 ] || [ ! -f "$BSTAMP" ]; then
  log "colcon build (ros2_ws)"
  (cd ros2_ws && "$VENV/bin/colcon" --log-base log build --symlink-install \
      --event-handlers console_direct- \
      --cmake-args -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF \
      > "$ROOT/ros2_ws/build.log" 2>&1) || { tail -40 "$ROOT/ros2_ws/build.log" >&2; log "colcon build failed (full log: ros2_ws/build.log)"; exit 1; }
  rm -f "$ROOT"/ros2_ws/install/.k4d-build-*; touch "$BSTAMP"
fi

# ---- 5. make everything importable from .venv without sourcing -----------------------------
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
MSGS_SITE=$(ls -d "$ROOT"/ros2_ws/install/k4d_msgs/lib/python3*/site-packages | head -1)
echo "$MSGS_SITE" > "$SITE/k4d_msgs_install.pth"
# ros_wheels_bootstrapper puts .venv/lib on LD_LIBRARY_PATH; the typesupport libraries live there too.
for so in "$ROOT"/ros2_ws/install/k4d_msgs/lib/*.so; do ln -sf "$so" "$VENV/lib/$(basename "$so")"; done
# Editable installs in "compat" mode (a .pth entry per package folder): from the repository root the
# folders k4d_kinematics/ etc. would otherwise shadow the packages as namespace packages.
for pkg in k4d_kinematics k4d_worldmodel k4d_bringup; do
  if [ $FORCE = 1 ] || ! grep -qs "$ROOT/$pkg\$" "$SITE"/__editable__.*"$pkg"*.pth; then
    log "pip install -e $pkg"
    "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation \
      --config-settings editable_mode=compat -e "$pkg" >/dev/null
  fi
done
# Compile the numba rasteriser once (cached next to its source), so the first node start or test is not
# 20-40 s of JIT compilation on a fresh clone.
JIT_HASH=$(sha256sum k4d_kinematics/k4d_kinematics/raster.py | cut -c1-16)
JIT_STAMP="$VENV/.k4d-jit-$JIT_HASH"
if [ $FORCE = 1 ] || [ ! -f "$JIT_STAMP" ]; then
  log "compiling the pointmap rasteriser (numba cache)"
  (cd /tmp && "$VENV/bin/python" -c "
from k4d_kinematics.camera import Extrinsics, PinholeCamera
from k4d_kinematics.pointmap import PointmapRenderer
from k4d_kinematics.robot import RobotModel
m = RobotModel.yam()
r = PointmapRenderer(m, PinholeCamera(96, 64, 80.0, 80.0, 47.5, 31.5),
                     Extrinsics.look_at((0.9, 0.3, 0.8), (0.2, 0.0, 0.15)))
r.render_sequence(r.model.lower[None].repeat(2, 0) * 0)
")
  rm -f "$VENV"/.k4d-jit-*; touch "$JIT_STAMP"
fi
log "done in $(( $(date +%s) - t0 )) s"
