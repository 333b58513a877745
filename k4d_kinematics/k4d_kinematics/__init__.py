"""k4d_kinematics."""
