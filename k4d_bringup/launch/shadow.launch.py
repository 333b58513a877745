"""k4d beside the real robot: shadow evaluation, live robot pointmap and the calibration overlay.

    ros2 launch k4d_bringup shadow.launch.py [robot_config:=/path/robot.yaml] [checkpoint:=DIR]
        [overlay:=true] [scenario:=NAME] [policy:=NAME] [log_path:=FILE]

Starts ONLY k4d's nodes. The robot's own drivers run separately and are not touched: the YAM driver
(``/joint_states``; its joint_trajectory_controller takes the policy's chunks) and an RGB-D camera driver such as
realsense2_camera (``ros2 launch realsense2_camera rs_launch.py align_depth.enable:=true``). Topic names and the
calibration come from ``robot_config`` (default ``config/robot.yaml``), loaded after each node's own parameter file:

- ``k4d_shadow`` (shadow_node): evaluates each executed chunk against the camera; results on /k4d/shadow/result
  and in the JSONL log. It only subscribes to the chunk topic and can never publish on actuator topics.
- ``k4d_pointmap`` (pointmap_node): the live robot pointmap / mask (/k4d/robot_mask), remapped to the driver's
  joint states.
- ``k4d_overlay`` (overlay_node): /k4d/overlay, the camera image with the projected robot (calibration check).
- ``k4d_imagine`` (imagine_node) only with ``checkpoint:=DIR``; otherwise point ``imagine_action`` at a world-model
  server on a GPU machine.

The pip-only path (no distro) starts the same nodes with the same files: ``k4d shadow run --params robot.yaml``;
feed it with the drivers, or with a recording replayed as if it were the robot (``k4d replay rec.mcap``).
"""
import os

import yaml
from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def _robot_params(path: str) -> dict:
    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    return dict((data.get("/**") or {}).get("ros__parameters") or {})


def _nodes(context):
    bringup = get_package_share_directory("k4d_bringup")
    kin = get_package_share_directory("k4d_kinematics")
    cfg = lambda pkg, name: os.path.join(pkg, "config", name)  # noqa: E731
    robot_config = LaunchConfiguration("robot_config").perform(context) or cfg(bringup, "robot.yaml")
    robot = _robot_params(robot_config)
    overrides = {}
    ext_file = robot.get("extrinsics_file", "")
    if ext_file and not os.path.isabs(ext_file):  # relative to robot.yaml
        overrides["extrinsics_file"] = os.path.join(os.path.dirname(os.path.abspath(robot_config)), ext_file)
    for arg in ("scenario", "policy", "log_path"):
        value = LaunchConfiguration(arg).perform(context)
        if value:
            overrides[arg] = value
    js = robot.get("joint_states_topic", "/joint_states")
    nodes = [
        Node(package="k4d_bringup", executable="shadow_node", name="k4d_shadow", output="screen",
             parameters=[cfg(bringup, "shadow_node.yaml"), robot_config, overrides]),
        Node(package="k4d_kinematics", executable="pointmap_node", name="k4d_pointmap", output="screen",
             parameters=[cfg(kin, "pointmap_node.yaml"), robot_config, overrides],
             remappings=[("joint_states", js)]),
    ]
    if LaunchConfiguration("overlay").perform(context).lower() == "true":
        nodes.append(Node(package="k4d_bringup", executable="overlay_node", name="k4d_overlay", output="screen",
                          parameters=[robot_config]))
    checkpoint = LaunchConfiguration("checkpoint").perform(context)
    if checkpoint:
        wm = get_package_share_directory("k4d_worldmodel")
        nodes.append(Node(package="k4d_worldmodel", executable="imagine_node", name="k4d_imagine", output="screen",
                          parameters=[cfg(wm, "imagine_node.yaml"), robot_config, overrides,
                                      {"checkpoint_dir": checkpoint, "autostart": True, "preview": False}]))
    return nodes


def generate_launch_description():
    bringup = get_package_share_directory("k4d_bringup")
    return LaunchDescription([
        DeclareLaunchArgument("robot_config", default_value="",
                              description="robot parameter file (default: k4d_bringup/config/robot.yaml)"),
        DeclareLaunchArgument("checkpoint", default_value="",
                              description="also run imagine_node with this checkpoint ('' = use a remote server)"),
        DeclareLaunchArgument("overlay", default_value="true", description="publish /k4d/overlay"),
        DeclareLaunchArgument("scenario", default_value="", description="scenario name for the results"),
        DeclareLaunchArgument("policy", default_value="", description="name of the executed policy"),
        DeclareLaunchArgument("log_path", default_value="", description="JSONL results log"),
        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", os.environ.get(
            "FASTDDS_DEFAULT_PROFILES_FILE", os.path.join(bringup, "config", "fastdds_large_data.xml"))),
        OpaqueFunction(function=_nodes),
    ])
