"""ir_guidance: a ROS 2 stack that guides a needle into a peripheral vein.

Layers: ``kinematics`` and other domain packages are ROS-free algorithms; ``nodes`` are
thin rclpy adapters; ``config`` and ``ros_env`` are shared by every entry point.
"""

__version__ = '0.1.0'
