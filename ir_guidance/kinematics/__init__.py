"""ROS-free arm kinematics on pinocchio: FK, Jacobians and needle-pose IK for any serial chain."""

from ir_guidance.kinematics.chain import SerialChain
from ir_guidance.kinematics.needle_ik import IkResult, NeedleIk, NeedlePose, UnreachableError

__all__ = ['IkResult', 'NeedleIk', 'NeedlePose', 'SerialChain', 'UnreachableError']
