"""ament_python build script for ir_guidance (also installable with plain pip)."""

import os
from glob import glob

from setuptools import find_packages, setup

package_name = 'ir_guidance'
SHARE = os.path.join('share', package_name)


def share_tree(top):
    """Map every file under ``top`` to share/<pkg>/<subdir>, keeping subdirectories.

    Globbed at build time; a missing or empty directory yields nothing.
    """
    by_dir = {}
    for path in sorted(glob(os.path.join(top, '**', '*'), recursive=True)):
        if os.path.isfile(path) and '__pycache__' not in path:
            by_dir.setdefault(os.path.join(SHARE, os.path.dirname(path)), []).append(path)
    return sorted(by_dir.items())


data_files = [
    ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
    (SHARE, ['package.xml']),
]
for top in ('launch', 'config', 'urdf', 'sim'):
    data_files += share_tree(top)

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*']),
    # The trained ultrasound model travels with the code that loads it.
    package_data={'ir_guidance': ['perception/weights/*.pt', 'perception/weights/*.json']},
    data_files=data_files,
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='ir_guidance maintainers',
    maintainer_email='ir-guidance@example.com',
    description='ROS 2 stack for robotic venous access (NIR/US-guided needle insertion).',
    license='Apache-2.0',
    tests_require=['pytest'],
    python_requires='>=3.10',
    entry_points={
        'console_scripts': [
            'ir-guidance = ir_guidance.cli:main',
            'arm_interface = ir_guidance.nodes.arm_interface:main',
            'sim = ir_guidance.nodes.sim:main',
            'nir = ir_guidance.nodes.nir:main',
            'ultrasound = ir_guidance.nodes.ultrasound:main',
            'vessel_mapper = ir_guidance.nodes.vessel_mapper:main',
            'trajectory_planner = ir_guidance.nodes.trajectory_planner:main',
            'force_monitor = ir_guidance.nodes.force_monitor:main',
            'controller = ir_guidance.nodes.controller:main',
            'recorder = ir_guidance.nodes.recorder:main',
            'live_view = ir_guidance.nodes.live_view:main',
        ],
    },
)
