"""overlay_node: the live camera image with the projected robot (mask tint + outline) on /k4d/overlay.

    python -m k4d_bringup.ros.overlay_node --ros-args -p image_topic:=/camera/color/image_raw

The visual calibration check: if the green robot silhouette (rendered by pointmap_node from /joint_states
through the calibrated camera) does not sit on the robot in the image, the extrinsics or intrinsics are
wrong (see docs/CALIBRATION.md; ``k4d calib check`` scores it).

Subscribes (SENSOR_QOS): ``image_topic`` sensor_msgs/Image (rgb8/bgr8/rgba8/bgra8/mono8) and ``mask_topic``
(/k4d/robot_mask, mono8, 255 = robot; published by pointmap_node, pixel-aligned with the image).
Publishes (SENSOR_QOS): ``overlay_topic`` (/k4d/overlay) sensor_msgs/Image rgb8 with the image's header, one
per image while someone subscribes (no work otherwise). The newest mask is used if its stamp is within
``max_age_s`` of the image's (else the image is published without overlay and the staleness reported in
/diagnostics); a mask of another size is reported and not drawn.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import Image

from k4d_kinematics.overlay import overlay_frame
from k4d_kinematics.ros.conversions import image_to_numpy, numpy_to_image, rgb_from_image, time_to_ns
from k4d_kinematics.ros.diagnostics import DiagnosticsPublisher, RateLatencyStats
from k4d_kinematics.ros.node_logic import ThrottledLog, first_line
from k4d_kinematics.ros.params import declare_config
from k4d_kinematics.ros.qos import SENSOR_QOS
from k4d_kinematics.config import param_doc


def _doc(text: str, read_only: bool = True) -> dict:
    return param_doc(text, read_only)  # read-only unless said otherwise


@dataclass
class OverlayConfig:
    image_topic: str = field(default="/camera/color/image_raw", metadata=_doc("Camera image to draw on."))
    mask_topic: str = field(default="/k4d/robot_mask", metadata=_doc("Robot mask (mono8, 255 = robot)."))
    overlay_topic: str = field(default="/k4d/overlay", metadata=_doc("Output image (rgb8)."))
    max_age_s: float = field(default=0.2, metadata=_doc(
        "Largest |image stamp - mask stamp| for drawing the mask, seconds.", False))
    robot_alpha: float = field(default=0.35, metadata=_doc("Tint strength of the robot mask, 0..1.", False))

    def __post_init__(self):
        for name in ("image_topic", "mask_topic", "overlay_topic"):
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty, got ''")
        if not (isinstance(self.max_age_s, (int, float)) and self.max_age_s > 0):
            raise ValueError(f"max_age_s must be > 0, got {self.max_age_s!r}")
        if not (isinstance(self.robot_alpha, (int, float)) and 0 <= self.robot_alpha <= 1):
            raise ValueError(f"robot_alpha must be in [0, 1], got {self.robot_alpha!r}")


class OverlayNode(Node):
    def __init__(self, node_name: str = "k4d_overlay", **kwargs):
        super().__init__(node_name, **kwargs)
        self.cfg: OverlayConfig = declare_config(self, OverlayConfig, self._on_config)
        self.stats = RateLatencyStats()
        self.diag = DiagnosticsPublisher(self)
        self.diag.add("overlay", self.stats)
        self._log = ThrottledLog(self.get_logger().warning)
        self._mask: Optional[tuple[int, np.ndarray]] = None
        self.pub = self.create_publisher(Image, self.cfg.overlay_topic, SENSOR_QOS)
        self.create_subscription(Image, self.cfg.mask_topic, self._on_mask, SENSOR_QOS)
        self.create_subscription(Image, self.cfg.image_topic, self._on_image, SENSOR_QOS)

    def _on_config(self, cfg: OverlayConfig) -> None:
        self.cfg = cfg

    def _report(self, message: str) -> None:
        self.stats.error(message)
        self._log(message)

    def _on_mask(self, msg: Image) -> None:
        try:
            self._mask = (time_to_ns(msg.header.stamp), image_to_numpy(msg) > 0)
        except Exception as exc:  # noqa: BLE001
            self._report(f"robot mask dropped: {first_line(exc)}")

    def _on_image(self, msg: Image) -> None:
        if self.pub.get_subscription_count() == 0:
            return
        t0 = time.perf_counter()
        try:
            rgb = rgb_from_image(msg)
            mask = None
            if self._mask is not None:
                stamp, m = self._mask
                age = abs(time_to_ns(msg.header.stamp) - stamp) * 1e-9
                if m.shape != rgb.shape[:2]:
                    self._report(f"robot mask is {m.shape[1]}x{m.shape[0]}, image is {rgb.shape[1]}x{rgb.shape[0]}")
                elif age > self.cfg.max_age_s:
                    self.diag.extra["stale_mask_s"] = f"{age:.3f}"
                else:
                    mask = m
            out = overlay_frame(rgb, mask, robot_alpha=self.cfg.robot_alpha)
        except Exception as exc:  # noqa: BLE001
            self._report(f"image dropped: {first_line(exc)}")
            return
        self.pub.publish(numpy_to_image(out, "rgb8", msg.header))
        self.stats.record(time.perf_counter() - t0)


def main(args=None) -> int:
    from k4d_kinematics.ros.node_main import run_node

    return run_node(OverlayNode, "k4d_overlay", args)


if __name__ == "__main__":
    import sys

    sys.exit(main())
