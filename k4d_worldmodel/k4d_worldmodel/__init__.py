"""k4d_worldmodel."""
