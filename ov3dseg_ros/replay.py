"""Replay a ROS 2 bag (sqlite3 or MCAP, read with rosbags) into the node graph, with /clock for use_sim_time.

Messages go out as their recorded CDR bytes (no deserialisation). /tf_static and other latched topics are
published transient-local. In deterministic mode the replay waits, before each new sensor frame, until the
mapping node has integrated or dropped every frame published so far (it watches /ov3dseg/status), so the map
does not depend on the machine's speed; ``rate`` paces the bag in real time (1.0 = recorded speed).
"""
from __future__ import annotations

import contextlib

import importlib
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import rclpy
from rclpy.context import Context
from rclpy.node import Node
from rclpy.publisher import Publisher
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosbags.highlevel import AnyReader
from rosbags.interfaces import QosDurability
from rosgraph_msgs.msg import Clock
from tqdm import tqdm

from ov3dseg_ros.conversions import ns_to_stamp
from ov3dseg_ros.graph import NodeGraph, resolve_params
from ov3dseg_ros.mapping_node import MappingNode
from ov3dseg_ros.msg import MapStatus
from ov3dseg_ros.params import QOS_INPUTS, MapperConfig
from ov3dseg_ros.query_client import QueryClient
from ov3dseg_ros.timing import StageTimings

LABEL_NAMES_TOPIC = "/ground_truth/label_names"
ORACLE_LABELS_TOPIC = "/ground_truth/semantic/image_raw"
PIPELINE_FRAMES = 3
"""Frames a deterministic replay of a single frame source keeps in flight (published, not yet settled), so that
transport overlaps integration. With one source the mapper settles frames in stamp order (one /tf stream, one
image stream per topic, both in order), so the map stays the same; several sources go one frame at a time."""
QUIET_S = 0.5
"""A replay that does not wait per frame ends once the mapper's counters stopped changing for this long."""
SETTLE_TIMEOUT_S = 15.0
"""Longest time the mapper's worker may sit idle while the replay waits for a frame to settle; then the replay
goes on (counted in ``unsettled``): a frame whose transform was recorded after the next frame settles later.
(5 s was too short on a loaded 2-core machine: /tf messages then reached the mapper up to ~15 s late.)"""
DISCOVERY_TIMEOUT_S = 10.0
"""Longest wait for the mapping node's subscriptions to match the replay's publishers."""

SENSOR_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE)
LATCHED_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)


class ReplayError(RuntimeError):
    """The bag cannot be replayed (not a ROS 2 bag, missing topics, the graph did not come up)."""


@dataclass
class ReplayResult:
    """Outcome of a replay: the saved map (or None), the label names used, frame counters, timings.

    ``timings``: StageTimings.summary() of the mapping worker plus the replay's own "publish" stage;
    ``wall_s``: seconds from the first published message to the last frame settled; ``unsettled``: frames the
    deterministic mode gave up waiting for (0 in a clean run).
    """

    map_path: str | None
    label_names: list[str]
    frames_published: int
    frames_integrated: int
    frames_dropped: int
    timings: dict[str, dict[str, float]] = field(default_factory=dict)
    wall_s: float = 0.0
    messages_published: int = 0
    unsettled: int = 0
    queries: list[tuple[str, Any]] = field(default_factory=list)
    """(text, ov3dseg_ros/srv/Query response) for each query asked after the replay."""
    model: Any = None
    """The mapper's model stage (ov3dseg_core.models.semantic_stage.SemanticStage: kind, embed, classify), or None."""
    model_passes: dict[str, int] = field(default_factory=dict)
    """Model branch runs of the replay: {"2d": key frames through the 2D branch, "3d": 3D-branch runs}; {} without
    a model."""


def message_class(msgtype: str) -> type | None:
    """The rclpy class of 'pkg/msg/Name', or None when that interface package is not installed."""
    package, _, name = msgtype.partition("/msg/")
    try:
        return getattr(importlib.import_module(f"{package}.msg"), name)
    except (ImportError, AttributeError):
        return None


def read_label_names(reader: AnyReader) -> list[str]:
    """Label names from the bag's /ground_truth/label_names (std_msgs/String, JSON list; the last one wins)."""
    names: list[str] = []
    connections = [c for c in reader.connections if c.topic == LABEL_NAMES_TOPIC]
    for connection, _, raw in reader.messages(connections=connections):
        text = reader.deserialize(raw, connection.msgtype).data
        try:
            names = [str(n) for n in json.loads(text)]
        except (json.JSONDecodeError, TypeError) as exc:
            raise ReplayError(f"{LABEL_NAMES_TOPIC} is not a JSON list of names: {exc}") from None
    return names


class _StatusWatch:
    """Frames the mapper settled (integrated or dropped), from /ov3dseg/status, with waits on that count."""

    def __init__(self, node: Node, mapper: MappingNode):
        self._mapper = mapper
        self._settled = 0
        self._changed = threading.Condition()
        node.create_subscription(MapStatus, "/ov3dseg/status", self._on_status, 10)

    def _on_status(self, msg: MapStatus) -> None:
        with self._changed:
            self._settled = max(self._settled, msg.frames_integrated + msg.frames_dropped)
            self._changed.notify_all()

    def wait_settled(self, frames: int, idle_timeout_s: float) -> bool:
        """Until ``frames`` settled (True), or the mapper's worker sat idle for ``idle_timeout_s`` (False)."""
        idle_since = time.monotonic()
        with self._changed:
            while not self._changed.wait_for(lambda: self._settled >= frames, timeout=0.05):
                if self._mapper.busy:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since > idle_timeout_s:
                    return False
        return True

    def wait_quiet(self, frames: int, quiet_s: float) -> None:
        """Until ``frames`` settled, or no frame settled for ``quiet_s`` (frames lost on the way never settle)."""
        while True:
            with self._changed:
                before = self._settled
                if self._changed.wait_for(lambda: self._settled >= frames, timeout=quiet_s):
                    return
                if self._settled == before:
                    return


def _wait_for(condition, what: str, timeout_s: float = DISCOVERY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise ReplayError(f"{what} within {timeout_s:g} s")
        time.sleep(0.01)


def replay_bag(bag_path: str | Path, params: dict[str, Any] | None = None, oracle: bool = False,
               deterministic: bool = True, rate: float | None = None, save_map: str | None = None,
               params_files: list[str | Path] | None = None, progress: bool = True,
               domain_id: int | None = None, queries: Sequence[str] = (), query_threshold: float = 0.0,
               ) -> ReplayResult:
    """Replay ``bag_path`` through a fresh node graph in this process and return what it built.

    params: mapping-node parameters on top of ``params_files`` (default config/default.yaml); oracle: feed the
    bag's ground-truth labels (/ground_truth/semantic/image_raw) as the label input, with the names from
    /ground_truth/label_names; rate: real-time factor (None = as fast as possible); save_map: write the map there
    at the end; domain_id: ROS domain of the replay's own context (default: ROS_DOMAIN_ID); queries: texts sent to
    /query after the replay with ``query_threshold`` (0 = the node's calibrated default; answers in
    ReplayResult.queries; without queries no text encoder is loaded).
    ReplayError for an unusable bag.
    """
    bag_path = Path(bag_path)
    if rate is not None and not rate > 0:
        raise ValueError(f"rate must be positive, got {rate}")
    with AnyReader([bag_path]) as reader:
        if not reader.is2:
            raise ReplayError(f"{bag_path} is a ROS 1 bag; replay needs a ROS 2 bag (sqlite3 or MCAP)")
        topics = {c.topic for c in reader.connections}
        values = resolve_params(params_files, params)
        cameras = values.get("cameras", MapperConfig().cameras)
        remappings = {}
        label_names = list(values.get("label_names") or [])
        if oracle:
            if ORACLE_LABELS_TOPIC not in topics or LABEL_NAMES_TOPIC not in topics:
                raise ReplayError(f"oracle replay needs {ORACLE_LABELS_TOPIC} and {LABEL_NAMES_TOPIC} in {bag_path}")
            if len(cameras) != 1:
                raise ReplayError(f"oracle labels are one image stream; cameras lists {len(cameras)} namespaces")
            remappings[MapperConfig().topic(cameras[0], "semantic")] = ORACLE_LABELS_TOPIC
            label_names = read_label_names(reader)
        elif not label_names and LABEL_NAMES_TOPIC in topics and all(
                MapperConfig().topic(ns, "semantic") in topics for ns in cameras):
            label_names = read_label_names(reader)
        overrides = {**(params or {}), "use_sim_time": True, "label_names": label_names}
        if deterministic:  # it waits for every frame: subscribe reliably, so that none is lost on the way
            overrides.update({f"qos_{kind}_reliability": "reliable" for kind in QOS_INPUTS})
        if not queries:  # nobody will ask: do not spend CPU on loading the text encoder during the replay
            overrides["text_encoder"] = ""

        context = Context()
        rclpy.init(context=context, domain_id=domain_id)
        try:
            graph = NodeGraph(params_files, overrides, remappings, context=context)
            try:
                result = _run(reader, graph, context, deterministic, rate, save_map, progress, label_names)
                if queries:
                    with contextlib.suppress(Exception):  # a failed load is what the answers then say
                        graph.mapper.text_encoder()  # loaded in the background; /query does not wait for it
                    with QueryClient(context) as client:
                        result.queries = [(text, client.call(text, threshold=query_threshold)) for text in queries]
                return result
            finally:
                graph.shutdown()
        finally:
            rclpy.try_shutdown(context=context)


def _publishers(reader: AnyReader, node: Node, wanted: set[str]) -> dict[str, Publisher]:
    """A publisher per bag topic the mapper subscribes to (latched topics transient-local); not /clock."""
    publishers = {}
    for connection in reader.connections:
        if connection.topic not in wanted or connection.topic in publishers or connection.topic == "/clock":
            continue
        cls = message_class(connection.msgtype)
        if cls is None:
            node.get_logger().warning(f"skipping {connection.topic}: {connection.msgtype} is not installed")
            continue
        latched = connection.topic == "/tf_static" or any(
            q.durability == QosDurability.TRANSIENT_LOCAL for q in connection.ext.offered_qos_profiles)
        publishers[connection.topic] = node.create_publisher(cls, connection.topic,
                                                             LATCHED_QOS if latched else SENSOR_QOS)
    return publishers


def _run(reader: AnyReader, graph: NodeGraph, context: Context, deterministic: bool, rate: float | None,
         save_map: str | None, progress: bool, label_names: list[str]) -> ReplayResult:
    mapper = graph.mapper
    if mapper.semantic is not None:  # a deterministic replay runs each model pass before the next frame
        mapper.semantic.synchronous = deterministic
    node = Node("ov3dseg_replay", context=context)
    graph.executor.add_node(node)
    graph.nodes.append(node)
    watch = _StatusWatch(node, mapper)
    graph.start()

    publishers = _publishers(reader, node, {s.topic_name for s in mapper.subscriptions})
    connections = [c for c in reader.connections if c.topic in publishers]
    frame_topics = {mapper.resolve_topic_name(mapper.config.topic(ns, "depth")) for ns in mapper.config.cameras}
    frame_topics |= {mapper.resolve_topic_name(t) for t in mapper.config.lidar_topics}
    sources = frame_topics & set(publishers)
    if not sources:
        raise ReplayError(f"the bag has none of the mapper's frame topics {sorted(frame_topics)}")
    in_flight = min(PIPELINE_FRAMES, mapper.queue.maxsize) if len(sources) == 1 else 1
    clock_pub = node.create_publisher(Clock, "/clock", SENSOR_QOS)
    _wait_for(lambda: all(p.get_subscription_count() > 0 for p in [clock_pub, *publishers.values()]),
              "the mapping node's subscriptions did not match the replay's publishers")
    # Start the clock at the first message after /tf_static (recorded at any time, often 0), and wait until the
    # mapper has it: a frame that arrived while the mapper's clock still read an earlier bag time would count the
    # gap as time waited for its transform or camera_info, and expire as soon as the clock caught up.
    ordered = [c for c in connections if c.topic == "/tf_static"]
    others = [c for c in connections if c not in ordered]
    first_ns = next((stamp for _, stamp, _ in reader.messages(connections=others)), reader.start_time)
    clock_pub.publish(Clock(clock=ns_to_stamp(first_ns)))
    _wait_for(lambda: mapper.get_clock().now().nanoseconds >= first_ns, "the mapping node did not receive /clock")

    timings = StageTimings()
    published = frames = unsettled = 0
    last_clock = -1
    total = sum(c.msgcount for c in connections)
    start = time.perf_counter()
    bag_start: int | None = None
    with tqdm(total=total, unit="msg", desc="replay", disable=not progress) as bar:
        # /tf_static first (latched), so that the first frames find their static transforms.
        for connection, _, raw in reader.messages(connections=ordered):
            publishers[connection.topic].publish(bytes(raw))
            published += 1
            bar.update()
        for connection, stamp_ns, raw in reader.messages(connections=others):
            bag_start = stamp_ns if bag_start is None else bag_start
            if rate is not None:
                delay = (stamp_ns - bag_start) / 1e9 / rate - (time.perf_counter() - start)
                if delay > 0:
                    time.sleep(delay)
            is_frame = connection.topic in frame_topics
            if deterministic and is_frame:
                unsettled += not watch.wait_settled(frames - in_flight + 1, SETTLE_TIMEOUT_S)
            with timings.measure("publish"):
                if stamp_ns > last_clock:
                    clock_pub.publish(Clock(clock=ns_to_stamp(stamp_ns)))
                    last_clock = stamp_ns
                publishers[connection.topic].publish(bytes(raw))
            published += 1
            frames += is_frame
            bar.update()
    if not deterministic:
        watch.wait_quiet(frames, QUIET_S)
    elif not watch.wait_settled(frames, SETTLE_TIMEOUT_S):
        # Frames still waiting for transforms the bag does not have: let their TF timeout pass in bag time.
        clock_pub.publish(Clock(clock=ns_to_stamp(last_clock + mapper.queue.timeout_ns + 1)))
        unsettled += not watch.wait_settled(frames, SETTLE_TIMEOUT_S)
    if mapper.semantic is not None and not mapper.semantic.wait_idle(SETTLE_TIMEOUT_S):
        unsettled += 1
    wall_s = time.perf_counter() - start
    if save_map:
        mapper.save_map(save_map)
    status = mapper.status()
    return ReplayResult(map_path=save_map, label_names=list(label_names), frames_published=frames,
                        frames_integrated=status.frames_integrated, frames_dropped=status.frames_dropped,
                        timings={**mapper.timings.summary(), **timings.summary()}, wall_s=wall_s,
                        messages_published=published, unsettled=unsettled,
                        model=None if mapper.semantic is None else mapper.semantic.model,
                        model_passes={} if mapper.semantic is None else dict(mapper.semantic.branch_passes))
