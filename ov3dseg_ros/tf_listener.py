"""/tf and /tf_static subscriptions feeding the ROS-free TfBuffer (tf2_ros is not available from PyPI)."""
from __future__ import annotations

import threading
from typing import Callable

from rclpy.callback_groups import CallbackGroup
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from tf2_msgs.msg import TFMessage

from ov3dseg_core.geometry.tf_buffer import TfBuffer, TransformError
from ov3dseg_ros.conversions import transform_from_msg

TF_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.BEST_EFFORT,
                    durability=DurabilityPolicy.VOLATILE)
"""/tf by default: best effort (it matches reliable and best-effort publishers), so a lost packet never holds the
newer transforms back (reliable delivery is in order: on a loaded host /tf then lags by seconds)."""
TF_STATIC_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000, reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.TRANSIENT_LOCAL)
"""/tf_static: latched (transient-local), so transforms published before the node started still arrive."""
WARN_PERIOD_S = 5.0


class TfListener:
    """Subscribes /tf and /tf_static into ``buffer``, handling time per edge (parent -> child) as tf2 does.

    - A dynamic sample stamped more than ``time_jump_s`` before the newest sample of its own edge (a bag
      restarting, a simulator reset) restarts that edge's history only, and calls ``on_time_jump(stamp_ns)`` with
      the new stamp; other edges keep theirs. ``time_jump_s`` 0 disables this.
    - A /tf transform stamped 0 means "no time": on an edge without stamped samples it is stored as the latest
      value, valid at all times (a static-like sender); on an edge with stamped samples it is ignored and counted
      in ``zero_stamps`` (a stale publisher must not disturb a moving pose).
    - Malformed transforms are counted in ``invalid``. Warnings are rate-limited.

    ``on_update()`` runs after every message, e.g. to wake a worker waiting for transforms. ``guard(name,
    callback)`` (optional) wraps the two subscription callbacks, e.g. to make them fail-safe. ``qos``: of /tf.
    """

    def __init__(self, node: Node, buffer: TfBuffer, *, time_jump_s: float = 1.0,
                 on_time_jump: Callable[[int], None] | None = None, on_update: Callable[[], None] | None = None,
                 callback_group: CallbackGroup | None = None, qos: QoSProfile = TF_QOS,
                 guard: Callable[[str, Callable], Callable] = lambda name, callback: callback):
        self.buffer = buffer
        self.received = 0
        self.invalid = 0
        self.time_jumps = 0
        self.zero_stamps = 0
        self._node = node
        self._jump_ns = int(round(time_jump_s * 1e9))
        self._newest: dict[str, tuple[str, int]] = {}  # child -> (parent, newest stamp of its dynamic edge)
        self._lock = threading.Lock()  # /tf and /tf_static may be served by different threads
        self._on_time_jump = on_time_jump
        self._on_update = on_update
        self._loggers: dict[str, object] = {}
        self._subscriptions = [
            node.create_subscription(TFMessage, "/tf", guard("/tf", lambda m: self._on_message(m, False)), qos,
                                     callback_group=callback_group),
            node.create_subscription(TFMessage, "/tf_static", guard("/tf_static", lambda m: self._on_message(m, True)),
                                     TF_STATIC_QOS, callback_group=callback_group),
        ]

    def _on_message(self, msg: TFMessage, static: bool) -> None:
        jumped_to, jumps = None, 0
        with self._lock:
            for transform in msg.transforms:
                try:
                    parent, child, stamp_ns, T = transform_from_msg(transform)
                    if static:
                        self.buffer.set_transform(parent, child, stamp_ns, T, static=True)
                        self._newest.pop(child, None)
                    else:
                        jumped = self._add_dynamic(parent, child, stamp_ns, T)
                        if jumped is None:
                            continue
                        if jumped:
                            jumped_to, jumps = stamp_ns, jumps + 1
                    self.received += 1
                except (ValueError, TransformError) as exc:
                    self.invalid += 1
                    self._warn("invalid", f"ignoring transform {transform.header.frame_id!r} -> {transform.child_frame_id!r} "
                               f"on {'/tf_static' if static else '/tf'}: {exc} ({self.invalid} ignored so far)")
        if jumped_to is not None and self._on_time_jump is not None:
            self._on_time_jump(jumped_to)
        self.time_jumps += jumps  # counted once handled, so a waiting caller sees a finished reset
        if self._on_update is not None:
            self._on_update()

    def _add_dynamic(self, parent: str, child: str, stamp_ns: int, T) -> bool | None:
        """Store one /tf sample with the per-edge rules: None when it was ignored (a stamp 0 on a moving edge),
        else whether it restarted its edge (a time jump back)."""
        known = self._newest.get(child)
        if known is not None and known[0] != parent:
            known = None  # the frame moved to another parent: TfBuffer starts the new edge afresh
        if stamp_ns == 0:
            if known is not None:
                self.zero_stamps += 1
                self._warn("stamp_0", f"ignoring /tf transform {parent!r} -> {child!r} stamped 0 on an edge with stamped "
                           f"transforms (a stale publisher?) ({self.zero_stamps} so far)")
                return None
            self.buffer.set_transform(parent, child, 0, T, static=True)
            return False
        if known is not None and self._jump_ns > 0 and stamp_ns < known[1] - self._jump_ns:
            self._restart_edge(parent, child, stamp_ns, T, known[1])
            return True
        self.buffer.set_transform(parent, child, stamp_ns, T)
        self._newest[child] = (parent, stamp_ns if known is None else max(stamp_ns, known[1]))
        return False

    def _restart_edge(self, parent: str, child: str, stamp_ns: int, T, newest_ns: int) -> None:
        """Replace the history of edge parent -> child by this one sample (a time jump back on that edge)."""
        self._warn("time_jump", f"/tf {parent!r} -> {child!r} jumped back by {(newest_ns - stamp_ns) / 1e9:.3f} s (bag loop?): "
                   "restarting that edge's history")
        # TfBuffer replaces an edge and its history when it switches between static and dynamic: the public way
        # to restart one edge.
        self.buffer.set_transform(parent, child, stamp_ns, T, static=True)
        self.buffer.set_transform(parent, child, stamp_ns, T, static=False)
        self._newest[child] = (parent, stamp_ns)

    def _warn(self, kind: str, text: str) -> None:
        """A warning rate-limited per ``kind`` (a logger each, so that kinds do not hide each other)."""
        logger = self._loggers.get(kind)
        if logger is None:
            logger = self._loggers.setdefault(kind, self._node.get_logger().get_child(f"tf_{kind}"))
        logger.warning(text, throttle_duration_sec=WARN_PERIOD_S)
