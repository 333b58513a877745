"""Camera calibration check: does the robot, projected through the calibration, sit where the image shows it?

    score = alignment_score(rgb, robot_mask)         # {"valid", "score", "edge_hit", "chance", "edge_px"}
    agree = depth_agreement(depth, robot_depth_m)    # {"valid", "fraction", "median_abs_m"}
    k4d calib check recording.mcap --extrinsics config/extrinsics.yaml       # per-frame scores

Edge agreement: the outline of the projected robot mask (``k4d_kinematics.overlay.mask_edges``) must lie on
strong image gradients. ``edge_hit`` is the fraction of outline pixels that have a strong gradient (top
``1 - percentile`` of the frame's Sobel magnitudes) within ``band_px`` pixels (default width / 640 rounded:
1 px at 720 x 480, 0 on small images); ``chance`` is the same
fraction for a random pixel. ``score = (edge_hit - chance) / (1 - chance)``: 1 = every outline pixel is on an
image edge, 0 = no better than chance, negative = worse. A correct calibration gives a clearly positive
score (0.5-1 on a real camera); a calibration off by a few centimetres or degrees puts the outline on flat
regions and the score drops towards 0. With a registered depth image, ``depth_agreement`` adds a metric
check: the fraction of projected robot pixels whose measured depth is within ``tol_m`` of the rendered one.
"""
from __future__ import annotations

import numpy as np

from .predicate import dilate


def gradient_magnitude(rgb: np.ndarray) -> np.ndarray:
    """(H, W) float32 Sobel gradient magnitude of the grey image of (H, W, 3) uint8 or (H, W)."""
    from scipy.ndimage import sobel

    a = np.asarray(rgb, np.float32)
    g = a.mean(axis=-1) if a.ndim == 3 else a
    return np.hypot(sobel(g, axis=0), sobel(g, axis=1)).astype(np.float32)


def alignment_score(rgb: np.ndarray, robot_mask: np.ndarray, band_px: int | None = None, percentile: float = 85.0,
                    min_edge_px: int = 10) -> dict:
    from k4d_kinematics.overlay import mask_edges

    m = np.asarray(robot_mask, bool)
    g = gradient_magnitude(rgb)
    if m.shape != g.shape:
        raise ValueError(f"robot_mask is {m.shape}, the image is {g.shape}: they must be pixel-aligned")
    edges = mask_edges(m)
    # Outline pixels on the image border are no evidence either way (the robot leaves the view there).
    edges[0, :] = edges[-1, :] = False
    edges[:, 0] = edges[:, -1] = False
    n = int(edges.sum())
    if n < min_edge_px:
        return {"valid": False, "score": float("nan"), "edge_hit": float("nan"), "chance": float("nan"),
                "edge_px": n, "reason": "robot (almost) not in view"}
    if band_px is None:  # 1 px of slack at 720 x 480 (real images blur, calibrations are never pixel-exact)
        band_px = int(round(m.shape[1] / 640))
    thr = float(np.percentile(g, percentile))
    strong = g > max(thr, 1e-6)
    near = dilate(strong, band_px)
    hit, chance = float(near[edges].mean()), float(near.mean())
    score = (hit - chance) / (1.0 - chance) if chance < 1 else 0.0
    return {"valid": True, "score": float(np.clip(score, -1, 1)), "edge_hit": hit, "chance": chance, "edge_px": n,
            "reason": ""}


def depth_agreement(depth: np.ndarray, robot_depth: np.ndarray, tol_m: float = 0.03, min_px: int = 20) -> dict:
    """Fraction of robot pixels (finite ``robot_depth``) whose measured depth is within ``tol_m`` (m)."""
    d, r = np.asarray(depth, np.float64), np.asarray(robot_depth, np.float64)
    if d.shape != r.shape:
        raise ValueError(f"depth is {d.shape}, rendered robot depth is {r.shape}")
    sel = np.isfinite(r) & np.isfinite(d) & (d > 0)
    n = int(sel.sum())
    if n < min_px:
        return {"valid": False, "fraction": float("nan"), "median_abs_m": float("nan"), "pixels": n}
    err = np.abs(d[sel] - r[sel])
    return {"valid": True, "fraction": float((err < tol_m).mean()), "median_abs_m": float(np.median(err)),
            "pixels": n}


def check_recording(path, extrinsics, model=None, camera=None, image_topic: str = "/camera/color/image_raw",
                    camera_info_topic: str = "/camera/color/camera_info", joint_states_topic: str = "/joint_states",
                    depth_topic: str = "", every: int = 1, max_frames: int = 0) -> dict:
    """Per-frame calibration scores of an MCAP recording (see module doc); needs the ROS message packages.

    ``extrinsics``: k4d_kinematics Extrinsics (T_base_cam of the optical frame). ``model``: RobotModel (default
    built-in YAM). ``camera``: PinholeCamera (default: the recording's first CameraInfo).
    Returns {"frames": [{"stamp_ns", "score", "edge_hit", "chance", "depth_fraction", ...}], "summary": {...}}.
    """
    import dataclasses

    from k4d_bringup.recording import deserialize, read_messages
    from k4d_kinematics.pointmap import PointmapRenderer
    from k4d_kinematics.robot import RobotModel
    from k4d_kinematics.ros.conversions import camera_info_to_camera, depth_from_image, rgb_from_image, time_to_ns
    from k4d_kinematics.ros.node_logic import JointStateMerger

    from .session import FramePairer

    model = model or RobotModel.yam()
    merger = JointStateMerger()
    pairer = FramePairer(bool(depth_topic))  # the live node's and the replay's rule: nearest depth within 20 ms
    renderer = None
    frames, n_img = [], 0
    awaiting: dict[int, tuple[dict, np.ndarray]] = {}  # scored frames the pairer has not released yet

    def paired(released) -> None:
        for f in released:
            row, robot_depth = awaiting.pop(f.stamp_ns, (None, None))
            if row is not None and f.depth is not None:
                da = depth_agreement(f.depth, robot_depth)
                row.update(depth_fraction=da["fraction"], depth_median_abs_m=da["median_abs_m"])

    topics = [t for t in (image_topic, camera_info_topic, joint_states_topic, depth_topic) if t]
    for topic, datatype, log_ns, data in read_messages(path, topics):
        full = bool(max_frames) and len(frames) >= max_frames
        if full and not awaiting:
            break
        if full and topic == image_topic:
            continue
        msg = deserialize(datatype, data)
        if topic == camera_info_topic and camera is None:
            camera = camera_info_to_camera(msg)
        elif topic == joint_states_topic:
            try:
                merger.update(msg.name, msg.position, time_to_ns(msg.header.stamp) or log_ns, model, "ignore", "clamp")
            except ValueError:
                continue
        elif topic == depth_topic:
            paired(pairer.depth(time_to_ns(msg.header.stamp) or log_ns, depth_from_image(msg)))
        elif topic == image_topic:
            n_img += 1
            if camera is None or not merger.values or (n_img - 1) % max(every, 1):
                continue
            if renderer is None:
                ext = dataclasses.replace(extrinsics, child_frame=camera.frame_id) \
                    if extrinsics.child_frame != camera.frame_id else extrinsics
                renderer = PointmapRenderer(model, camera, ext)
            rgb = rgb_from_image(msg)
            if rgb.shape[:2] != (camera.height, camera.width):
                raise ValueError(f"image is {rgb.shape[1]}x{rgb.shape[0]} but camera_info is "
                                 f"{camera.width}x{camera.height}")
            pm = renderer.render(merger.q(model, "zero", "clamp"))
            stamp = time_to_ns(msg.header.stamp) or log_ns
            row = {"stamp_ns": stamp, **alignment_score(rgb, pm.mask)}
            frames.append(row)
            if depth_topic:
                awaiting[stamp] = (row, pm.depth.copy())
                paired(pairer.image(stamp, rgb))

    if camera is None:
        raise ValueError(f"{path}: no CameraInfo on {camera_info_topic} (give --camera-info)")
    scores = [f["score"] for f in frames if f["valid"]]
    dfr = [f["depth_fraction"] for f in frames if np.isfinite(f.get("depth_fraction", np.nan))]
    summary = {"frames": len(frames), "valid_frames": len(scores),
               "median_score": float(np.median(scores)) if scores else float("nan"),
               "min_score": float(np.min(scores)) if scores else float("nan"),
               "median_depth_fraction": float(np.median(dfr)) if dfr else float("nan")}
    return {"frames": frames, "summary": summary}
