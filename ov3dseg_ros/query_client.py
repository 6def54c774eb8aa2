"""Client of the mapping node's /query service (what ``ros2 service call /query ...`` does on a ROS install)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from ov3dseg_core.data.ply import write_ply_vertices
from ov3dseg_core.msgs.pointcloud2 import pointcloud2_to_array
from ov3dseg_ros.srv import Query

RETRY_PERIOD_S = 0.5
"""Pause before asking again after an answer that says 'try again' (busy, text encoder still loading)."""


class QueryClient:
    """A small node of its own that calls /query; it spins only while it waits for an answer.

    The context must be initialised (rclpy.init). Call ``close()`` (or use ``with``) when done.
    """

    def __init__(self, context: Context | None = None, service: str = "/query"):
        self.node = Node("ov3dseg_query_client", context=context)
        self.client = self.node.create_client(Query, service)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)

    def wait_for_service(self, timeout_s: float) -> bool:
        return self.client.wait_for_service(timeout_sec=timeout_s)

    def call(self, text: str, top_k: int = 0, threshold: float = 0.0, timeout_s: float = 60.0,
             retry_s: float = 0.0) -> Query.Response:
        """Send one query (threshold 0 = the node's calibrated default); TimeoutError when no answer arrives within
        ``timeout_s``. An answer that says "try again" (the node is busy or still loading its text encoder) is
        asked again every RETRY_PERIOD_S for up to ``retry_s`` seconds."""
        deadline = time.monotonic() + retry_s
        while True:
            response = self._call_once(text, top_k, threshold, timeout_s)
            if response.success or not response.message.endswith("try again") or time.monotonic() >= deadline:
                return response
            time.sleep(RETRY_PERIOD_S)

    def _call_once(self, text: str, top_k: int, threshold: float, timeout_s: float) -> Query.Response:
        future = self.client.call_async(Query.Request(text=text, top_k=top_k, threshold=threshold))
        self.executor.spin_until_future_complete(future, timeout_sec=timeout_s)
        if not future.done():
            self.client.remove_pending_request(future)
            raise TimeoutError(f"/query did not answer within {timeout_s:g} s")
        return future.result()

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()

    def __enter__(self) -> "QueryClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def hit_points(response: Query.Response) -> np.ndarray:
    """The matching voxels of a /query answer as a structured (K,) array with x, y, z, score."""
    return pointcloud2_to_array(response.cloud)


def format_response(text: str, response: Query.Response) -> str:
    """A short human-readable answer: the node's verdict (found or not, the best object, how sure), then one line
    per object: where (a point on it), confidence, size, voxels, relevancy."""
    if not response.success:
        return f"query {text!r} failed: {response.message}"
    lines = [response.message]
    for i, hit in enumerate(response.hits):
        c, s = hit.center, hit.size
        lines.append(f"{i + 1:3d}. {hit.label:<20} confidence {hit.confidence:.2f} at ({c.x:.2f}, {c.y:.2f}, "
                     f"{c.z:.2f}) m  size {s.x:.2f} x {s.y:.2f} x {s.z:.2f} m  {hit.num_voxels:6d} voxels  "
                     f"relevancy max {hit.score:.2f} mean {hit.mean_score:.2f}")
    return "\n".join(lines)


def write_hits_ply(response: Query.Response, path: str | Path) -> int:
    """Write the matching voxels (x, y, z, score) as a PLY file; returns the number of points."""
    points = hit_points(response)
    write_ply_vertices(path, points)
    return len(points)
