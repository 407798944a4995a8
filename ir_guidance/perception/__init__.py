"""Perception (ROS-free): ultrasound vessel segmentation, cross-sections and tracking."""
