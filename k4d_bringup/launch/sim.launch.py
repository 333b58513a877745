"""Simulated YAM workcell with the k4d nodes and RViz.

    ros2 launch k4d_bringup sim.launch.py [headless:=false] [rviz:=true] [checkpoint:=default|DIR|'']
        [scenario:=easy|medium|hard] [seed:=0] [use_moveit:=false] [demo:=true]

The same nodes and the same YAML parameter files run without a distro through ``k4d sim``.
The sim publishes its camera pose as a static TF (base -> camera_color_optical_frame), which the pointmap
and plan nodes read here (extrinsics_source 'tf'); ``k4d sim`` passes them an extrinsics file instead.
Large camera/pointmap messages need a big Fast DDS shared-memory segment: the sim nodes get
``config/fastdds_large_data.xml`` through FASTDDS_DEFAULT_PROFILES_FILE unless you set your own.
With ``use_moveit:=true`` the sim's own planner is not started and plans come from MoveIt
(``/display_planned_path``), which the plan node previews.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node


def generate_launch_description():
    bringup = get_package_share_directory("k4d_bringup")
    kin = get_package_share_directory("k4d_kinematics")
    wm = get_package_share_directory("k4d_worldmodel")
    cfg = lambda pkg, name: os.path.join(pkg, "config", name)  # noqa: E731

    headless = LaunchConfiguration("headless")
    rviz = LaunchConfiguration("rviz")
    checkpoint = LaunchConfiguration("checkpoint")
    scenario = LaunchConfiguration("scenario")
    seed = LaunchConfiguration("seed")
    use_moveit = LaunchConfiguration("use_moveit")
    demo = LaunchConfiguration("demo")
    camera = {"camera_info_topic": "/camera/color/camera_info", "extrinsics_source": "tf"}

    return LaunchDescription([
        DeclareLaunchArgument("headless", default_value="false", description="no RViz, no viewer windows"),
        DeclareLaunchArgument("rviz", default_value="true", description="start RViz with k4d.rviz"),
        DeclareLaunchArgument("checkpoint", default_value="default",
                              description="world-model checkpoint dir for imagine_node ('default' = the model shipped "
                                          "with k4d_worldmodel, '' = no world model)"),
        DeclareLaunchArgument("scenario", default_value="easy", description="easy | medium | hard (distractors)"),
        DeclareLaunchArgument("seed", default_value="0", description="scene randomisation seed"),
        DeclareLaunchArgument("use_moveit", default_value="false", description="take plans from MoveIt instead of the sim planner"),
        DeclareLaunchArgument("demo", default_value="true", description="run the scripted pick-and-place demo"),

        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE",
                               os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE", cfg(bringup, "fastdds_large_data.xml"))),

        Node(package="k4d_bringup", executable="sim_node", name="k4d_sim",
             parameters=[cfg(bringup, "sim_node.yaml"), {"scenario": scenario, "seed": seed}], output="screen"),
        Node(package="k4d_bringup", executable="planner_node", name="k4d_planner",
             parameters=[cfg(bringup, "planner_node.yaml")], condition=UnlessCondition(use_moveit), output="screen"),
        Node(package="k4d_bringup", executable="demo_node", name="k4d_demo",
             parameters=[cfg(bringup, "demo_node.yaml")],
             condition=IfCondition(PythonExpression(["'", demo, "' == 'true' and '", use_moveit, "' != 'true'"])),
             output="screen"),
        Node(package="k4d_kinematics", executable="pointmap_node", name="k4d_pointmap",
             parameters=[cfg(kin, "pointmap_node.yaml"), camera], output="screen"),
        Node(package="k4d_kinematics", executable="plan_node", name="k4d_plan",
             parameters=[cfg(kin, "plan_node.yaml"), camera], output="screen"),
        Node(package="k4d_worldmodel", executable="imagine_node", name="k4d_imagine",
             parameters=[cfg(wm, "imagine_node.yaml"), camera,
                         {"checkpoint_dir": checkpoint, "autostart": True, "adapt_inputs": True,
                          "depth_topic": "/camera/depth/image_rect_raw"}],
             condition=IfCondition(PythonExpression(["'", checkpoint, "' != ''"])), output="screen"),
        Node(package="rviz2", executable="rviz2", name="rviz2",
             arguments=["-d", os.path.join(bringup, "rviz", "k4d.rviz")],
             condition=IfCondition(PythonExpression(["'", rviz, "' == 'true' and '", headless, "' != 'true'"]))),
    ])
