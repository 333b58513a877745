"""Headless camera rendering of the workcell: RGB, metric depth, segmentation, and the matching CameraInfo.

    import os; os.environ.setdefault("MUJOCO_GL", "osmesa")     # before mujoco is imported
    from k4d_bringup.sim.render import CameraRenderer
    renderer = CameraRenderer(scene)                            # one OpenGL (OSMesa) context
    frame = renderer.render(data, segmentation=True)            # CameraFrame
    frame.rgb (H, W, 3) uint8; frame.depth (H, W) float32 m; frame.robot_link / frame.object_id (H, W) int16
    renderer.camera                                             # k4d_kinematics PinholeCamera of the image

RGB and depth come from ONE render pass (``mjr_readPixels`` reads both buffers); segmentation is a second
pass with MuJoCo's segment/ID-colour flags and is only done on request. Depth is MuJoCo's reversed-Z
buffer linearised to metres along the optical axis (the z of the camera optical frame):
``depth = f n / (n + d (f - n))`` with d in [0, 1] (1 at the near plane n, 0 at the far plane f);
pixels at the far plane (nothing hit) are NaN. Rows are flipped from OpenGL's bottom-up order, so pixel
(v, u) = (row, column) follows the PinholeCamera convention (pixel centres at integer coordinates).

The OpenGL context is made current on every call, so one renderer may be used from any thread, but not
from two threads at once. Rendering needs a GL backend: ``MUJOCO_GL=osmesa`` (software, headless) or
``egl``; ``gl_available()`` says whether one works here.
"""
from __future__ import annotations

import atexit
import os
import weakref
from dataclasses import dataclass

import numpy as np

os.environ.setdefault("MUJOCO_GL", "osmesa")

from .scene import CAMERA_NAME, ROBOT_GROUP, SCENE_GROUP, SimScene  # noqa: E402

_LIVE: "weakref.WeakSet[CameraRenderer]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    # Free GL contexts before interpreter teardown (PyOpenGL cannot free them during module teardown).
    for r in list(_LIVE):
        try:
            r.close()
        except Exception:
            pass


def gl_available() -> tuple[bool, str]:
    """(ok, reason): whether an offscreen GL context can be created with the current MUJOCO_GL."""
    try:
        import mujoco

        ctx = mujoco.GLContext(16, 16)
        ctx.make_current()
        ctx.free()
        return True, f"MUJOCO_GL={os.environ.get('MUJOCO_GL', '')}"
    except Exception as exc:  # missing libOSMesa, PyOpenGL, no display for glfw, ...
        return False, (f"no offscreen OpenGL (MUJOCO_GL={os.environ.get('MUJOCO_GL', '')!r}): "
                       f"{type(exc).__name__}: {exc}; install libosmesa6 and set MUJOCO_GL=osmesa")


@dataclass
class CameraFrame:
    """One camera image set, all pixel-aligned (row v, column u), camera optical frame.

    rgb: (H, W, 3) uint8. depth: (H, W) float32 metres along the optical axis, NaN where nothing was hit.
    robot_link: (H, W) int16 robot link id (``RobotModel.link_names`` index) or -1; None unless segmentation.
    object_id: (H, W) int16 index into ``SceneLayout.objects`` or -1; None unless segmentation.
    stamp: simulation time (s) of the rendered state.
    """

    rgb: np.ndarray | None
    depth: np.ndarray | None
    robot_link: np.ndarray | None = None
    object_id: np.ndarray | None = None
    stamp: float = 0.0


class CameraRenderer:
    """Offscreen renderer of one fixed camera of a SimScene.

    scene: the SimScene; camera_name: MuJoCo camera (default the main camera). Image size and
    intrinsics are the scene's PinholeCamera (``self.camera``), i.e. exactly the CameraInfo to publish.
    """

    def __init__(self, scene: SimScene, camera_name: str = CAMERA_NAME, max_geom: int = 2000):
        import mujoco

        self.scene = scene
        self.model = model = scene.model
        self.camera = scene.camera
        self.width, self.height = self.camera.width, self.camera.height
        cam_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera_name)
        if cam_id < 0:
            raise ValueError(f"camera_name = {camera_name!r}: no such camera in the model")
        self._ctx = mujoco.GLContext(self.width, self.height)
        self._ctx.make_current()
        self._mjr = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_100)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._mjr)
        self._mjr.readDepthMap = mujoco.mjtDepthMap.mjDEPTH_ZEROFAR
        self._scn = mujoco.MjvScene(model, maxgeom=max_geom)
        self._opt = mujoco.MjvOption()
        self._cam = mujoco.MjvCamera()
        self._cam.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._cam.fixedcamid = cam_id
        self._rect = mujoco.MjrRect(0, 0, self.width, self.height)
        self._near = float(model.vis.map.znear * model.stat.extent)
        self._far = float(model.vis.map.zfar * model.stat.extent)
        self._rgb_buf = np.empty((self.height, self.width, 3), np.uint8)
        self._depth_buf = np.empty((self.height, self.width), np.float32)
        _LIVE.add(self)

    @property
    def near_far(self) -> tuple[float, float]:
        """Clip distances (metres)."""
        return self._near, self._far

    def linearize_depth(self, zbuf: np.ndarray) -> np.ndarray:
        """MuJoCo reversed-Z depth buffer values (1 near .. 0 far) -> metres along the optical axis (NaN at far)."""
        n, f = self._near, self._far
        z = zbuf.astype(np.float64)
        depth = (f * n) / (n + z * (f - n))
        depth[z <= 0.0] = np.nan
        return depth.astype(np.float32)

    def render(self, data, *, rgb: bool = True, depth: bool = True, segmentation: bool = False,
               robot_only: bool = False) -> CameraFrame:
        """Render the state in ``data`` (mujoco.MjData). Returns a CameraFrame (new arrays).

        robot_only: draw only the robot's visual geoms (table, floor and objects hidden), e.g. to compare
        with the k4d robot pointmap, which has no occluders.
        """
        import mujoco

        if self._mjr is None:
            raise RuntimeError("CameraRenderer.render called after close()")
        self._ctx.make_current()
        self._opt.geomgroup[:] = 0
        self._opt.geomgroup[ROBOT_GROUP] = 1
        if not robot_only:
            self._opt.geomgroup[SCENE_GROUP] = 1
        mujoco.mjv_updateScene(self.model, data, self._opt, None, self._cam, mujoco.mjtCatBit.mjCAT_ALL, self._scn)
        out = CameraFrame(None, None, stamp=float(data.time))
        if rgb or depth:
            mujoco.mjr_render(self._rect, self._scn, self._mjr)
            mujoco.mjr_readPixels(self._rgb_buf if rgb else None, self._depth_buf if depth else None, self._rect,
                                  self._mjr)
            if rgb:
                out.rgb = np.flipud(self._rgb_buf).copy()
            if depth:
                out.depth = self.linearize_depth(np.flipud(self._depth_buf))
        if segmentation:
            out.robot_link, out.object_id = self._segment()
        return out

    def _segment(self) -> tuple[np.ndarray, np.ndarray]:
        import mujoco

        flags = self._scn.flags
        old = flags.copy()
        try:
            flags[mujoco.mjtRndFlag.mjRND_SEGMENT] = True
            flags[mujoco.mjtRndFlag.mjRND_IDCOLOR] = True
            mujoco.mjr_render(self._rect, self._scn, self._mjr)
            buf = np.empty((self.height, self.width, 3), np.uint8)
            mujoco.mjr_readPixels(buf, None, self._rect, self._mjr)
        finally:
            np.copyto(flags, old)
        buf = np.flipud(buf).astype(np.int32)
        segid = buf[..., 0] + (buf[..., 1] << 8) + (buf[..., 2] << 16)  # 0 = background, else scene segid + 1
        n = self._scn.ngeom
        link_of = np.full(n + 2, -1, np.int16)
        obj_of = np.full(n + 2, -1, np.int16)
        for g in self._scn.geoms[:n]:
            if g.segid >= 0 and g.objtype == mujoco.mjtObj.mjOBJ_GEOM:
                link_of[g.segid + 1] = self.scene.geom_link[g.objid]
                obj_of[g.segid + 1] = self.scene.geom_object[g.objid]
        segid = np.clip(segid, 0, n + 1)
        return link_of[segid], obj_of[segid]

    def close(self) -> None:
        """Free the GL resources (also done at garbage collection)."""
        if getattr(self, "_mjr", None) is not None:
            self._ctx.make_current()
            self._mjr.free()
            self._mjr = None
            self._ctx.free()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
