"""ROS-free MuJoCo simulation of the k4d YAM workcell (never imports rclpy).

    from k4d_bringup.sim.workcell import YamSim      # the object a ROS node steps, reads and commands
    from k4d_bringup.sim.config import SimConfig     # config/sim.yaml

Modules: ``config`` (dataclass configs), ``scene`` (MjSpec from the k4d URDF, randomised layouts, camera),
``render`` (RGB / depth / segmentation + CameraInfo), ``ik`` (TCP IK via k4d_kinematics), ``planner``
(ruckig trajectories, validation), ``tracker`` (trajectory execution), ``policies`` (scripted policies,
failure injection, success predicates), ``workcell`` (YamSim).

Offscreen rendering defaults to OSMesa (``MUJOCO_GL=osmesa``), set here before mujoco is imported.
"""
import os

os.environ.setdefault("MUJOCO_GL", "osmesa")
