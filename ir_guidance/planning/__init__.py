"""ROS-free motion and insertion planning: jerk-limited trajectories, probe and needle poses."""
