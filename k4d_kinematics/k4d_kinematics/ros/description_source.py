"""Robot description for the k4d_kinematics nodes: built-in YAM, a URDF file, or /robot_description.

    src = DescriptionSource(node, cfg, on_change=lambda model: ...)   # cfg: RobotCameraConfig
    src.model   # RobotModel, or None while no valid description is known (src.error says why)

'yam' and 'file' load once at start-up; a broken file stops the node there (it is a configuration
error). 'topic' subscribes to std_msgs/String with LATCHED_QOS (reliable + transient-local, as
robot_state_publisher publishes it) and rebuilds the model on every new description. A bad description
(XML syntax, disconnected tree, missing mesh, no visual geometry) is reported, and the node renders
NOTHING until a good one arrives: keeping the previous model would publish a robot the description no
longer describes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from k4d_kinematics.config import RobotCameraConfig
from k4d_kinematics.robot import RobotModel


def load_model(source: str, urdf_path: str = "", xml: Optional[str] = None, mesh_dir: str = "") -> RobotModel:
    """Build a RobotModel from a description source ('yam', 'file' or 'topic' with ``xml``).

    Raises ValueError naming the problem (the core's URDF errors, or a model without visual meshes,
    which would render an empty pointmap that looks like "robot out of view").
    """
    md = Path(mesh_dir) if mesh_dir else None
    if source == "yam":
        model = RobotModel.yam(mesh_dir=md)
        where = "built-in YAM description"
    elif source == "file":
        model = RobotModel.from_urdf_file(urdf_path, mesh_dir=md)
        where = f"urdf_path '{urdf_path}'"
    elif source == "topic":
        if not xml or not xml.strip():
            raise ValueError("robot_description is empty")
        model = RobotModel.from_urdf_string(xml, mesh_dir=md)
        where = "robot_description"
    else:
        raise ValueError(f"description_source must be 'yam', 'file' or 'topic', got {source!r}")
    if not model.meshes:
        raise ValueError(f"{where}: robot '{model.name}' has no <visual> geometry to render")
    return model


class DescriptionSource:
    """Holds the current RobotModel; ``on_change(model_or_None)`` runs whenever it changes."""

    def __init__(self, node, cfg: RobotCameraConfig, on_change: Callable[[Optional[RobotModel]], None],
                 on_error: Callable[[str], None]):
        self.model: Optional[RobotModel] = None
        self.error = ""
        self._cfg, self._on_change, self._on_error = cfg, on_change, on_error
        self._last_xml: Optional[str] = None
        if cfg.description_source in ("yam", "file"):
            self._set(load_model(cfg.description_source, cfg.urdf_path, mesh_dir=cfg.mesh_dir))
        else:
            from std_msgs.msg import String

            from k4d_kinematics.ros.qos import LATCHED_QOS

            self.error = f"waiting for the robot description on {cfg.robot_description_topic}"
            node.create_subscription(String, cfg.robot_description_topic, self._on_description, LATCHED_QOS)

    def _set(self, model: Optional[RobotModel]) -> None:
        self.model = model
        self._on_change(model)

    def _on_description(self, msg) -> None:
        if msg.data == self._last_xml:
            return
        self._last_xml = msg.data
        try:
            model = load_model("topic", xml=msg.data, mesh_dir=self._cfg.mesh_dir)
        except Exception as exc:  # noqa: BLE001 - any parser failure is a bad description, never a crash
            self.error = (f"{self._cfg.robot_description_topic} rejected (not rendering until a valid one arrives): "
                          f"{exc}")
            self._set(None)
            self._on_error(self.error)
            return
        self.error = ""
        self._set(model)

    @property
    def summary(self) -> str:
        if self.model is None:
            return self.error or "no robot model"
        return f"{self.model.name} ({len(self.model.joint_names)} joints, {self._cfg.description_source})"
