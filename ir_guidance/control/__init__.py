"""The guidance controller (ROS-free): state machine, supervisor, fixed-rate loop.

``guidance`` is the deterministic update (state machine IDLE -> ... -> DONE, ABORT and
SAFE from anywhere), ``supervisor`` the checks every tick passes before anything moves,
``rate`` the monotonic fixed-rate loop used on hardware. ``nodes/controller.py`` wires
them to topics; docs/control.md describes the whole.
"""
