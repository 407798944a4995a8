"""Perception (ROS-free): vein segmentation in ultrasound and NIR images, vessels, tracking."""
