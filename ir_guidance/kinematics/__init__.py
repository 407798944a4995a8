"""ROS-free arm kinematics on pinocchio: FK, Jacobians, needle-pose and pose IK."""

from ir_guidance.kinematics.chain import SerialChain
from ir_guidance.kinematics.needle_ik import IkResult, NeedleIk, NeedlePose, UnreachableError
from ir_guidance.kinematics.pose_ik import PoseIk

__all__ = ['IkResult', 'NeedleIk', 'NeedlePose', 'PoseIk', 'SerialChain', 'UnreachableError']
