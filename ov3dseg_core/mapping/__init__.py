"""ROS-free voxel map: fusion (voxel_map), files (map_file) and text queries (query)."""
from ov3dseg_core.mapping.map_file import MapFileError, export_ply, load_map, save_map
from ov3dseg_core.mapping.query import (ObjectGroup, QueryError, QueryResult, group_voxels, query_features,
                                        query_labels, validate_query)
from ov3dseg_core.mapping.voxel_map import IntegrationStats, VoxelMap, VoxelMapConfig

__all__ = [
    "IntegrationStats", "MapFileError", "ObjectGroup", "QueryError", "QueryResult", "VoxelMap", "VoxelMapConfig",
    "export_ply", "group_voxels", "load_map", "query_features", "query_labels", "save_map", "validate_query",
]
