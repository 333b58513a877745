"""k4d_bringup."""
