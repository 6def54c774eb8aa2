"""One single-threaded executor per callback group, each in its own thread.

rclpy's MultiThreadedExecutor is slow in kilted (rclpy#1452: a plain subscriber received 67 of 200 messages with a
0.94 s p95 latency where the single-threaded executor got 200 of 200 at 1 ms), and a single-threaded executor
over a whole node lets one slow callback (a 2 s query, a map save) hold up /tf and the sensors. Here every group
of callbacks gets single-threaded executors of its own (rclcpp's callback-group executors, in rclpy), so TF and
sensor callbacks never wait behind anything else, whichever rclpy the robot runs.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

from rclpy.callback_groups import CallbackGroup
from rclpy.context import Context
from rclpy.executors import ExternalShutdownException, ShutdownException, SingleThreadedExecutor
from rclpy.node import Node

SPIN_TIMEOUT_S = 0.5
"""Longest wait of one spin step, seconds (so that a shutdown is seen without waking the wait set)."""


@dataclass(frozen=True)
class GroupSpec:
    """``threads`` single-threaded executors (threads) serving the entities of ``groups`` of one node.

    More than one thread needs a ReentrantCallbackGroup: the executors then take turns with the group's work (each
    runs one callback at a time), e.g. concurrent /query requests.
    """

    name: str
    groups: tuple[CallbackGroup, ...]
    threads: int = 1


class CallbackGroupExecutor(SingleThreadedExecutor):
    """A single-threaded executor that waits only on the entities of ``groups`` of the nodes added to it.

    Several of them can serve one node; none of them becomes ``node.executor`` (a node names one executor only),
    so no executor is woken when an entity is created: NodeSpinner's timed spin steps pick it up within
    SPIN_TIMEOUT_S. (Uses rclpy's Executor._nodes and _nodes_lock, as in Humble to Kilted.)
    """

    def __init__(self, groups: tuple[CallbackGroup, ...], *, context: Context | None = None):
        super().__init__(context=context)
        self._groups = frozenset(groups)

    def add_node(self, node: Node) -> bool:
        with self._nodes_lock:
            if node in self._nodes:
                return False
            self._nodes.add(node)
        self.wake()
        return True

    def can_execute(self, entity) -> bool:
        return entity.callback_group in self._groups and super().can_execute(entity)


class NodeSpinner:
    """Spins the callback groups of ``node`` (``specs``) in one thread per executor until ``shutdown()``."""

    def __init__(self, node: Node, specs: list[GroupSpec], context: Context | None = None):
        self._node = node
        self._stop = threading.Event()
        self.executors: list[tuple[str, CallbackGroupExecutor]] = []
        for spec in specs:
            for i in range(spec.threads):
                executor = CallbackGroupExecutor(spec.groups, context=context)
                executor.add_node(node)
                self.executors.append((f"{spec.name}_{i}" if spec.threads > 1 else spec.name, executor))
        self._threads: list[threading.Thread] = []

    def start(self) -> "NodeSpinner":
        for name, executor in self.executors:
            thread = threading.Thread(target=self._spin, args=(executor,), name=f"ov3dseg_{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _spin(self, executor: CallbackGroupExecutor) -> None:
        """Spin until shutdown; an exception escaping a callback is logged and spinning goes on (a backstop: the
        mapping node's own callbacks catch theirs)."""
        while not self._stop.is_set() and executor.context.ok():
            try:
                executor.spin_once(timeout_sec=SPIN_TIMEOUT_S)
            except (ExternalShutdownException, ShutdownException):
                return
            except Exception as exc:
                self._node.get_logger().error(f"callback failed: {exc!r}", throttle_duration_sec=5.0)

    def shutdown(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        for _, executor in self.executors:
            executor.wake()
        for thread in self._threads:
            thread.join(timeout=timeout_s)
        for _, executor in self.executors:
            executor.shutdown(timeout_sec=timeout_s)
