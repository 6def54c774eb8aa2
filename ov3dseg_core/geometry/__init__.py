"""Geometry: camera models and depth back-projection (camera), LiDAR points (lidar), rigid transforms
(transforms) and the time-indexed transform tree (tf_buffer). ROS-free."""
