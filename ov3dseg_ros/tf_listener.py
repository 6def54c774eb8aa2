"""/tf and /tf_static subscriptions feeding the ROS-free TfBuffer (tf2_ros is not available from PyPI)."""
from __future__ import annotations

from typing import Callable

from rclpy.callback_groups import CallbackGroup
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from tf2_msgs.msg import TFMessage

from ov3dseg_core.geometry.tf_buffer import TfBuffer, TransformError
from ov3dseg_ros.conversions import transform_from_msg

TF_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
                    durability=DurabilityPolicy.VOLATILE)
"""/tf as tf2_ros listens to it."""
TF_STATIC_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000, reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.TRANSIENT_LOCAL)
"""/tf_static: latched (transient-local), so transforms published before the node started still arrive."""


class TfListener:
    """Subscribes /tf and /tf_static into ``buffer``.

    A dynamic transform stamped more than ``time_jump_s`` before the newest one seen (a bag restarting, a
    simulator reset) clears the buffer's dynamic history, as tf2 does on a time jump backwards, and calls
    ``on_time_jump()``; ``time_jump_s`` 0 disables this. ``on_update()`` runs after every message, e.g. to wake a
    worker waiting for transforms. Malformed transforms are counted in ``invalid`` and logged (rate-limited).
    """

    def __init__(self, node: Node, buffer: TfBuffer, *, time_jump_s: float = 1.0,
                 on_time_jump: Callable[[], None] | None = None, on_update: Callable[[], None] | None = None,
                 callback_group: CallbackGroup | None = None):
        self.buffer = buffer
        self.received = 0
        self.invalid = 0
        self.time_jumps = 0
        self._node = node
        self._jump_ns = int(round(time_jump_s * 1e9))
        self._newest_ns = 0
        self._on_time_jump = on_time_jump
        self._on_update = on_update
        self._subscriptions = [
            node.create_subscription(TFMessage, "/tf", lambda m: self._on_message(m, False), TF_QOS,
                                     callback_group=callback_group),
            node.create_subscription(TFMessage, "/tf_static", lambda m: self._on_message(m, True), TF_STATIC_QOS,
                                     callback_group=callback_group),
        ]

    def _on_message(self, msg: TFMessage, static: bool) -> None:
        for transform in msg.transforms:
            try:
                parent, child, stamp_ns, T = transform_from_msg(transform)
                if not static:
                    self._check_time_jump(stamp_ns)
                self.buffer.set_transform(parent, child, stamp_ns, T, static=static)
                self.received += 1
            except (ValueError, TransformError) as exc:
                self.invalid += 1
                self._node.get_logger().warning(
                    f"ignoring transform {transform.header.frame_id!r} -> {transform.child_frame_id!r} on "
                    f"{'/tf_static' if static else '/tf'}: {exc} ({self.invalid} ignored so far)",
                    throttle_duration_sec=5.0)
        if self._on_update is not None:
            self._on_update()

    def _check_time_jump(self, stamp_ns: int) -> None:
        if self._jump_ns > 0 and stamp_ns < self._newest_ns - self._jump_ns:
            self._node.get_logger().warning(
                f"/tf time jumped back by {(self._newest_ns - stamp_ns) / 1e9:.3f} s (bag loop?): clearing the "
                "TF buffer (static transforms kept) and the frames waiting for it", throttle_duration_sec=1.0)
            self.buffer.clear()
            self._newest_ns = stamp_ns
            if self._on_time_jump is not None:
                self._on_time_jump()
            self.time_jumps += 1  # counted once handled, so a waiting caller sees a finished reset
        self._newest_ns = max(self._newest_ns, stamp_ns)
