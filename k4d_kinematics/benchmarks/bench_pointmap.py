"""Benchmark: robot pointmap rendering (ours) vs MuJoCo offscreen depth+segmentation vs point splatting.

    MUJOCO_GL=osmesa .venv/bin/python k4d_kinematics/benchmarks/bench_pointmap.py [--urdf FILE] [--frames 40]

Uses the official YAM meshes when /work/shared/robots/i2rt_yam/yam.urdf exists (else the built-in YAM),
the shipped 720x480 camera and extrinsics, and random joint configurations. All rows are measured in
the same run on the same machine. Not collected by pytest.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "osmesa")

import numba  # noqa: E402
import numpy as np  # noqa: E402

from k4d_kinematics.camera import Extrinsics, PinholeCamera  # noqa: E402
from k4d_kinematics.pointmap import PointmapRenderer  # noqa: E402
from k4d_kinematics.robot import RobotModel  # noqa: E402

HERE = Path(__file__).resolve().parent
CONFIG = HERE.parent / "config"
OFFICIAL = Path("/work/shared/robots/i2rt_yam/yam.urdf")


def device() -> str:
    cpu = platform.processor() or "cpu"
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {len(os.sched_getaffinity(0))} cores, numba {numba.get_num_threads()} threads "
            f"({numba.threading_layer()}), load average {load:.1f} at start")


def commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", str(HERE.parent)], cwd=HERE, capture_output=True,
                               text=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


def timeit(fn, n: int) -> np.ndarray:
    out = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t)
    return np.array(out) * 1e3


# ---------------------------------------------------------------------------------------------------------
# Baseline (a): MuJoCo offscreen depth + segmentation
# ---------------------------------------------------------------------------------------------------------
class MujocoBaseline:
    """Same robot and camera in MuJoCo: one depth render and one segmentation render per frame."""

    def __init__(self, urdf: Path, model: RobotModel, cam: PinholeCamera, ext: Extrinsics):
        import mujoco
        from scipy.spatial.transform import Rotation

        text = urdf.read_text()
        hint = f'<mujoco><compiler meshdir="{urdf.parent}" strippath="false" discardvisual="false"/></mujoco>'
        if "<mujoco>" in text:  # our generated URDF carries its own hint: replace it
            start, end = text.index("<mujoco>"), text.index("</mujoco>") + len("</mujoco>")
            text = text[:start] + text[end:]
        head = text.index(">", text.index("<robot")) + 1
        spec = mujoco.MjSpec.from_string(text[:head] + hint + text[head:])
        R_mj = ext.T_base_cam[:3, :3] @ np.diag([1.0, -1.0, -1.0])  # optical (z fwd, y down) -> MuJoCo (-z fwd, y up)
        q_wxyz = np.roll(Rotation.from_matrix(R_mj).as_quat(), 1)
        spec.worldbody.add_camera(name="cam", pos=ext.T_base_cam[:3, 3], quat=q_wxyz,
                                  fovy=float(np.degrees(2 * np.arctan(cam.height / 2 / cam.fy))))
        spec.visual.global_.offwidth = max(cam.width, 640)
        spec.visual.global_.offheight = max(cam.height, 480)
        self.mj = spec.compile()
        self.data = mujoco.MjData(self.mj)
        self.mujoco = mujoco
        self.renderer = mujoco.Renderer(self.mj, cam.height, cam.width)
        self.qadr = [self.mj.jnt_qposadr[self.mj.joint(n).id] for n in model.joint_names]
        self.ntri = int(self.mj.mesh_facenum.sum())

    def render(self, q):
        self.data.qpos[self.qadr] = q
        self.mujoco.mj_kinematics(self.mj, self.data)
        r = self.renderer
        r.update_scene(self.data, camera="cam")
        r.enable_depth_rendering()
        depth = r.render()
        r.disable_depth_rendering()
        r.enable_segmentation_rendering()
        seg = r.render()
        r.disable_segmentation_rendering()
        return depth, seg

    def close(self):
        self.renderer.close()


# ---------------------------------------------------------------------------------------------------------
# Baseline (b): paper-style point splatting (sample surface points, project, np.minimum.at z-buffer)
# ---------------------------------------------------------------------------------------------------------
class SplatBaseline:
    def __init__(self, model: RobotModel, cam: PinholeCamera, ext: Extrinsics, num_points: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        pts, lab = [], []
        areas = [0.5 * np.linalg.norm(np.cross(*(m.vertices[m.faces[:, 1:]] - m.vertices[m.faces[:, :1]]).transpose(1, 0, 2)),
                                      axis=1) for m in model.meshes]
        total = sum(a.sum() for a in areas)
        for m, a in zip(model.meshes, areas):
            n = max(1, int(round(num_points * a.sum() / total)))
            f = rng.choice(len(a), size=n, p=a / a.sum())
            r1, r2 = np.sqrt(rng.random(n)), rng.random(n)
            tri = m.vertices[m.faces[f]]
            pts.append((1 - r1)[:, None] * tri[:, 0] + (r1 * (1 - r2))[:, None] * tri[:, 1] + (r1 * r2)[:, None] * tri[:, 2])
            lab.append(np.full(n, m.link_index))
        self.pts, self.lab = np.concatenate(pts), np.concatenate(lab)
        self.model, self.cam, self.T_cam_base = model, cam, ext.T_cam_base

    def render(self, q):
        cam = self.cam
        T = self.T_cam_base @ self.model.fk(q)
        p = np.einsum("nij,nj->ni", T[self.lab, :3, :3], self.pts) + T[self.lab, :3, 3]
        z = p[:, 2]
        u = np.rint(cam.fx * p[:, 0] / z + cam.cx).astype(np.int64)
        v = np.rint(cam.fy * p[:, 1] / z + cam.cy).astype(np.int64)
        ok = (z > 0) & (u >= 0) & (u < cam.width) & (v >= 0) & (v < cam.height)
        idx, z, lab = v[ok] * cam.width + u[ok], z[ok], self.lab[ok]
        zbuf = np.full(cam.height * cam.width, np.inf)
        np.minimum.at(zbuf, idx, z)
        link = np.full(cam.height * cam.width, -1, np.int16)
        win = z == zbuf[idx]
        link[idx[win]] = lab[win]
        return zbuf.reshape(cam.height, cam.width), link.reshape(cam.height, cam.width)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--urdf", type=Path, default=OFFICIAL if OFFICIAL.exists() else None)
    ap.add_argument("--frames", type=int, default=40, help="single-frame renders to time")
    ap.add_argument("--splat-points", type=int, default=300_000)
    args = ap.parse_args(argv)

    model = RobotModel.from_urdf_file(args.urdf) if args.urdf else RobotModel.yam()
    urdf = args.urdf or Path(__import__("k4d_kinematics.robot", fromlist=["x"]).yam_urdf_path())
    cam = PinholeCamera.from_yaml(CONFIG / "camera_info.yaml")
    ext = Extrinsics.from_yaml(CONFIG / "extrinsics.yaml")
    rng = np.random.default_rng(0)
    Q = rng.uniform(model.lower, model.upper, size=(max(args.frames, 49), model.num_joints))
    plan = np.linspace(Q[0], Q[1], 49)

    ours = PointmapRenderer(model, cam, ext)
    ours.render(Q[0])  # compile / warm caches
    ref = [ours.render(q) for q in Q[:5]]
    rows = []
    t1 = timeit(lambda i: ours.render(Q[i]), args.frames)
    tp = timeit(lambda i: ours.render_sequence(plan), 5)
    buf = (np.empty((49, cam.height, cam.width, 3), np.float32), np.empty((49, cam.height, cam.width), np.int16))
    tr = timeit(lambda i: ours.render_sequence(plan, out=buf), 7)
    rows.append(("k4d raster (numba)", ours.num_triangles, t1, np.median(tp), "exact; 49-frame with fresh arrays"))
    rows.append(("k4d raster, 49-frame into reused buffers", ours.num_triangles, t1, np.median(tr),
                 "as the plan node renders plan after plan"))

    mj_note = ""
    try:
        mjb = MujocoBaseline(urdf, model, cam, ext)
        mjb.render(Q[0])
        m1 = timeit(lambda i: mjb.render(Q[i]), args.frames)
        rows.append((f"MuJoCo {os.environ['MUJOCO_GL']} depth+seg", mjb.ntri, m1, 49 * np.median(m1), "raster (GL)"))
        mjb.close()
    except Exception as exc:  # report why, keep the other rows
        mj_note = f"MuJoCo baseline did not run: {type(exc).__name__}: {exc}"

    splat = SplatBaseline(model, cam, ext, args.splat_points)
    splat.render(Q[0])
    s1 = timeit(lambda i: splat.render(Q[i]), args.frames)
    miss = np.mean([((pm.link >= 0) & (splat.render(q)[1] < 0)).sum() / max((pm.link >= 0).sum(), 1)
                    for pm, q in zip(ref, Q[:5])])
    rows.append((f"point splat ({args.splat_points // 1000}k pts, np.minimum.at)", len(splat.pts), s1,
                 49 * np.median(s1), f"misses {100 * miss:.1f}% of robot px"))

    print(f"device: {device()}")
    print(f"commit: {commit()}   robot: {args.urdf or 'built-in YAM'}   resolution: {cam.width}x{cam.height}")
    print(f"{'method':44s} {'prims':>8s} {'median ms':>10s} {'p90 ms':>8s} {'49-frame ms':>12s} {'vs ours':>8s}  notes")
    base = np.median(t1)
    for name, prims, t, plan_ms, note in rows:
        print(f"{name:44s} {prims:8d} {np.median(t):10.2f} {np.percentile(t, 90):8.2f} {plan_ms:12.1f} "
              f"{np.median(t) / base:7.1f}x  {note}")
    print("(49-frame for baselines = 49 x median single frame; ours = measured render_sequence incl. FK)")
    if mj_note:
        print(mj_note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
