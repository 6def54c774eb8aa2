"""Write a SimScene as a ROS 2 bag (what a robot would record, plus ground truth) or as a dataset folder.

Bag topics (all stamps = sensor time; the bag's record time equals it):

    /camera/color/image_raw, /camera/depth/image_raw (16UC1 mm), /camera/{color,depth}/camera_info
    /ground_truth/semantic/image_raw, /ground_truth/instance/image_raw   16UC1 (65535 = none)
    /lidar/points             PointCloud2 x y z intensity ring, frame lidar_link (with --lidar)
    /ground_truth/points      PointCloud2 x y z rgb label instance, frame map, once at the first stamp (latched)
    /ground_truth/label_names std_msgs/String JSON list (latched)
    /tf_static                map -> odom; base_link -> camera_link -> camera_color_optical_frame;
                              base_link -> lidar_link
    /tf                       odom -> base_link at every frame stamp (the platform's planar pose)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from ov3dseg_core.data.bag_writer import (BASE_FRAME, CAMERA_LINK, CAMERA_OPTICAL_FRAME, GT_POINTS_TOPIC,
                                          LATCHED_QOS, MAP_FRAME, ODOM_FRAME, SensorBagWriter)
from ov3dseg_core.data.readers.dataset_folder import write_dataset_folder
from ov3dseg_core.msgs.pointcloud2 import pack_rgb
from ov3dseg_core.sim.sensors import LidarScan
from ov3dseg_core.sim.world import SimScene

LIDAR_FRAME = "lidar_link"
LIDAR_TOPIC = "/lidar/points"
GT_CLOUD_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<f4"), ("label", "<i4"),
                           ("instance", "<i4")])
LIDAR_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4"), ("ring", "<u2")])


def gt_cloud_array(points: np.ndarray, colors: np.ndarray, labels: np.ndarray, instances: np.ndarray) -> np.ndarray:
    """Structured (N,) GT_CLOUD_DTYPE array (rgb packed PCL-style) from (N, 3) points, (N, 3) uint8 colours and
    (N,) int label / instance ids."""
    cloud = np.empty(len(points), GT_CLOUD_DTYPE)
    for axis, name in enumerate("xyz"):
        cloud[name] = points[:, axis]
    cloud["rgb"] = pack_rgb(np.ascontiguousarray(colors, np.uint8))
    cloud["label"] = labels
    cloud["instance"] = instances
    return cloud


def lidar_cloud_array(scan: LidarScan) -> np.ndarray:
    """Structured (N,) LIDAR_DTYPE array of one scan (LiDAR frame)."""
    cloud = np.empty(len(scan.points), LIDAR_DTYPE)
    for axis, name in enumerate("xyz"):
        cloud[name] = scan.points[:, axis]
    cloud["intensity"] = scan.intensity
    cloud["ring"] = scan.ring
    return cloud


def write_bag(scene: SimScene, path: str | Path, lidar: bool = True, observed_only: bool = True,
              storage: str = "mcap", progress: bool = False) -> Path:
    """Write ``scene`` as a rosbag2 at ``path`` (topics in the module docstring); ``lidar`` adds /lidar/points
    (if the scene has scans); ``observed_only`` limits /ground_truth/points to the surfaces the camera saw."""
    trajectory = scene.trajectory
    start = int(trajectory.stamps_ns[0])
    with SensorBagWriter(path, storage=storage) as bag:
        bag.write_static_transforms(start, [(MAP_FRAME, ODOM_FRAME, np.eye(4)),
                                            (BASE_FRAME, CAMERA_LINK, trajectory.T_base_camera),
                                            (CAMERA_LINK, CAMERA_OPTICAL_FRAME, trajectory.T_camera_optical),
                                            (BASE_FRAME, LIDAR_FRAME, trajectory.T_base_lidar)])
        bag.write_label_names(scene.label_names, stamp_ns=start)
        bag.write_pointcloud(start, GT_POINTS_TOPIC, MAP_FRAME, gt_cloud_array(*scene.gt_cloud(observed_only)),
                             qos=LATCHED_QOS)
        scans = scene.lidar if lidar else []
        for i, frame in enumerate(tqdm(scene.frames, desc=f"bag {Path(path).name}", unit="frame",
                                       disable=not progress)):
            bag.write_transforms(frame.stamp_ns, [(ODOM_FRAME, BASE_FRAME, trajectory.T_map_base[i])])
            bag.write_rgbd(frame.stamp_ns, CAMERA_OPTICAL_FRAME, frame.camera, frame.depth, color=frame.color,
                           gt_labels=frame.labels, gt_instances=frame.instances)
            if i < len(scans):
                bag.write_pointcloud(scans[i].stamp_ns, LIDAR_TOPIC, LIDAR_FRAME, lidar_cloud_array(scans[i]))
    return Path(path)


def write_dataset(scene: SimScene, out_dir: str | Path, observed_only: bool = True, color_format: str = "jpg",
                  progress: bool = False) -> Path:
    """Write ``scene`` as a ScanNet-style dataset folder (ov3dseg_core.data.readers.dataset_folder layout);
    ``color_format`` "jpg" (as ScanNet, fast) or "png" (lossless: the same colour as the bag)."""
    return write_dataset_folder(scene.to_scene(observed_only), out_dir, color_format=color_format, progress=progress)
