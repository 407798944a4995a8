"""The embedded simulator (ROS-free): phantom, physics, needle-tissue forces, sensors.

Only ``ir_guidance.nodes.sim`` wraps it in ROS; everything here is plain Python so that
tests and benchmarks drive it directly and deterministically from a seed.
"""
