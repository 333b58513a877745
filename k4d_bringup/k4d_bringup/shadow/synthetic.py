"""A small synthetic workcell camera (table, one box, the robot) for tests and examples, without a simulator.

    scene = SyntheticScene.default(width=48, height=32)
    rgb, depth = scene.render(q)                 # (H, W, 3) uint8, (H, W) float32 m (optical axis)
    scene.write_recording("rec.mcap", chunks)    # an MCAP with camera, depth, joint states, chunks, episodes

The robot is rendered with k4d_kinematics (flat colour per link, darker with distance); the table is the
plane z = 0 of the base frame with a smooth shading, the box a raised square (its top face at ``box_h``).
Because the image is made through a known calibration, it is the ground truth for the calibration check and
for the shadow scoring path (depth back-projection, success predicate).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

LINK_COLORS = np.array([[200, 200, 210], [230, 120, 40], [60, 160, 230], [240, 220, 60], [150, 90, 200],
                        [80, 200, 120], [220, 80, 120], [120, 120, 120], [250, 250, 250], [90, 60, 40]], np.float32)


@dataclass
class SyntheticScene:
    model: object
    camera: object
    extrinsics: object
    box_xy: tuple = (0.30, -0.18)
    box_half: float = 0.03
    box_h: float = 0.06

    @classmethod
    def default(cls, width: int = 48, height: int = 32, f: Optional[float] = None):
        from k4d_kinematics.camera import Extrinsics, PinholeCamera
        from k4d_kinematics.robot import RobotModel

        model = RobotModel.yam()
        f = f if f is not None else 60.0 * width / 48.0
        cam = PinholeCamera(width, height, f, f, (width - 1) / 2, (height - 1) / 2)
        ext = Extrinsics.look_at((0.95, 0.3, 0.9), (0.22, 0.0, 0.15), parent_frame=model.root_link,
                                 child_frame=cam.frame_id)
        return cls(model, cam, ext)

    def renderer(self, extrinsics=None):
        from k4d_kinematics.pointmap import PointmapRenderer

        return PointmapRenderer(self.model, self.camera, extrinsics or self.extrinsics)

    def background(self) -> tuple[np.ndarray, np.ndarray]:
        """Table + box: (rgb float32 (H, W, 3), depth (H, W) m)."""
        cam, T = self.camera, np.asarray(self.extrinsics.T_base_cam, np.float64)
        v, u = np.mgrid[0:cam.height, 0:cam.width]
        rays_cam = np.stack([(u - cam.cx) / cam.fx, (v - cam.cy) / cam.fy, np.ones_like(u, float)], -1)
        rays = rays_cam @ T[:3, :3].T  # base frame, per unit of optical depth
        o = T[:3, 3]
        depth = np.full(u.shape, np.nan)
        rgb = np.zeros(u.shape + (3,), np.float32)
        for h, is_box in ((self.box_h, True), (0.0, False)):
            with np.errstate(divide="ignore", invalid="ignore"):
                t = (h - o[2]) / rays[..., 2]
            p = o + rays * t[..., None]
            ok = (t > 0) & np.isnan(depth)
            inside = (np.abs(p[..., 0] - self.box_xy[0]) <= self.box_half) & \
                     (np.abs(p[..., 1] - self.box_xy[1]) <= self.box_half)
            sel = ok & (inside if is_box else True)
            depth[sel] = t[sel]
            if is_box:
                rgb[sel] = (210, 40, 40)
            else:
                shade = np.clip(0.8 + 0.3 * p[..., 0] - 0.2 * p[..., 1], 0.5, 1.1)[sel]  # smooth table
                rgb[sel] = np.array([140, 130, 110], np.float32) * shade[:, None]
        return rgb, depth.astype(np.float32)

    def render(self, q, extrinsics=None) -> tuple[np.ndarray, np.ndarray]:
        """Camera image and depth of the scene with the robot at ``q`` (model joint order)."""
        rgb, depth = self.background()
        pm = self.renderer(extrinsics).render(np.asarray(q, np.float64))
        robot = pm.mask & ~(pm.depth >= np.nan_to_num(depth, nan=np.inf))
        col = LINK_COLORS[np.clip(pm.link, 0, len(LINK_COLORS) - 1) % len(LINK_COLORS)]
        shade = np.clip(1.3 - 0.4 * np.nan_to_num(pm.depth, nan=1.0), 0.5, 1.0)[..., None]
        rgb[robot] = (col * shade)[robot]
        depth[robot] = pm.depth[robot]
        return np.clip(rgb + 0.5, 0, 255).astype(np.uint8), depth

    def home_q(self) -> np.ndarray:
        m = self.model
        q = np.clip(np.zeros(m.num_joints), m.lower, m.upper)
        for name, val in (("joint2", 0.8), ("joint3", 1.0)):
            if name in m.joint_index:
                q[m.joint_index[name]] = np.clip(val, m.lower[m.joint_index[name]], m.upper[m.joint_index[name]])
        return q

    def shifted(self, dx: float = 0.0, dy: float = 0.0, dz: float = 0.0):
        """Extrinsics moved by (dx, dy, dz) metres in the base frame (a wrong calibration)."""
        T = np.array(self.extrinsics.T_base_cam, np.float64)
        T[:3, 3] += (dx, dy, dz)
        return dataclasses.replace(self.extrinsics, T_base_cam=T)

    def write_recording(self, path, chunks: Sequence[dict], fps: float = 15.0, t0_ns: int = 1_700_000_000_000_000_000,
                        arm_joints: Sequence[str] = ("joint1", "joint2", "joint3", "joint4", "joint5", "joint6"),
                        episode_topic: str = "/k4d/episode", candidate_every: int = 0, gap_s: float = 0.4) -> dict:
        """Write an MCAP: the robot executes ``chunks`` ({"dq": (6,) rad total motion, "duration": s, "episode":
        "start ..."|"end ..."|None}) one after the other with the camera at ``fps``. Returns topic counts."""
        from rclpy.serialization import serialize_message
        from sensor_msgs.msg import CameraInfo, Image, JointState
        from std_msgs.msg import String
        from trajectory_msgs.msg import JointTrajectory

        from k4d_bringup.recording import McapRecorder
        from k4d_kinematics.ros.conversions import (camera_to_camera_info, data_to_joint_trajectory, numpy_to_image,
                                                    time_from_ns)
        from k4d_kinematics.sequence import JointTrajectoryData

        m = self.model
        arm = [m.joint_index[j] for j in arm_joints]
        rec = McapRecorder(path, compression="none")
        for topic, cls in (("/camera/color/image_raw", Image), ("/camera/color/camera_info", CameraInfo),
                           ("/camera/depth/image_rect_raw", Image), ("/joint_states", JointState),
                           ("/arm_controller/joint_trajectory", JointTrajectory), (episode_topic, String),
                           ("/policy_b/joint_trajectory", JointTrajectory)):
            rec.add_topic(topic, cls)
        q = self.home_q()
        t = t0_ns
        dt = int(1e9 / fps)

        def frame(now_ns, qq):
            rgb, depth = self.render(qq)
            stamp = time_from_ns(now_ns)
            js = JointState(name=list(m.joint_names), position=[float(x) for x in qq])
            js.header.stamp = stamp
            rec.write("/joint_states", serialize_message(js), now_ns)
            info = camera_to_camera_info(self.camera)
            info.header.stamp = stamp
            rec.write("/camera/color/camera_info", serialize_message(info), now_ns)
            img = numpy_to_image(rgb, "rgb8")
            img.header.stamp, img.header.frame_id = stamp, self.camera.frame_id
            rec.write("/camera/color/image_raw", serialize_message(img), now_ns)
            dimg = numpy_to_image(np.nan_to_num(depth, nan=0.0).astype(np.float32), "32FC1")
            dimg.header.stamp, dimg.header.frame_id = stamp, self.camera.frame_id
            rec.write("/camera/depth/image_rect_raw", serialize_message(dimg), now_ns + 1)

        for _ in range(3):
            frame(t, q)
            t += dt
        for i, c in enumerate(chunks):
            if c.get("episode_start"):
                rec.write(episode_topic, serialize_message(String(data=c["episode_start"])), t)
            dur, n = float(c.get("duration", 0.8)), 8
            times = dur * np.arange(1, n + 1) / n
            target = q.copy()
            target[arm] += np.asarray(c["dq"], np.float64)
            Q = q[None] + (target - q)[None] * (times / dur)[:, None]
            traj = JointTrajectoryData(list(arm_joints), times, Q[:, arm])
            rec.write("/arm_controller/joint_trajectory", serialize_message(data_to_joint_trajectory(traj)), t)
            if candidate_every and i % candidate_every == 0:
                cand = JointTrajectoryData(list(arm_joints), times, (Q[:, arm] * 0.9))
                rec.write("/policy_b/joint_trajectory", serialize_message(data_to_joint_trajectory(cand)), t)
            start = t
            while t <= start + int(dur * 1e9):
                s = (t - start) * 1e-9 / dur
                frame(t, q + (target - q) * min(s, 1.0))
                t += dt
            q = target
            for _ in range(int(gap_s * fps)):
                frame(t, q)
                t += dt
            if c.get("episode_end"):
                rec.write(episode_topic, serialize_message(String(data=c["episode_end"])), t)
        for _ in range(int(fps)):
            frame(t, q)
            t += dt
        rec.close()
        return dict(rec.counts)
