"""The ``ov3dseg_mapper`` node: RGB-D (+ labels) and LiDAR in, a semantic voxel map out, answering /query.

Threads: every callback group has single-threaded executors of its own (``spin_specs``, run by
ov3dseg_ros.executors.NodeSpinner): /tf, the sensors, /query (several threads), the map services, the text services
and the output timers never wait for each other, and none depends on rclpy's MultiThreadedExecutor. Sensor
callbacks only file messages (stamp matching, a bounded TF-gated queue); one worker thread decodes, looks up
map <- sensor and integrates each frame through a list of stages (``add_frame_stage``); the model runs in a thread
of its own (SemanticStage: a 3D model, or XMask3D with its 2D branch on key frames), so integration never waits
for it. Every callback is fail-safe: an exception is logged, counted (``callback_errors``) and a service answers
success false.
"""
from __future__ import annotations

import concurrent.futures
import itertools
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_srvs.srv import Trigger
from visualization_msgs.msg import MarkerArray

from ov3dseg_core.data.frames import RGBDFrame, frame_points, labels_from_u16
from ov3dseg_core.geometry.camera import PinholeCamera, depth_to_metres
from ov3dseg_core.geometry.lidar import clean_points
from ov3dseg_core.geometry.tf_buffer import TfBuffer, TransformError
from ov3dseg_core.geometry.transforms import transform_points
from ov3dseg_core.eval.query_calibration import read_calibration
from ov3dseg_core.mapping.query import (FEATURE_CALIBRATION, LABEL_CALIBRATIONS, QueryCalibration, QueryError,
                                        QueryResult, query_embeddings, query_features, query_labels, validate_query)
from ov3dseg_core.atomic_write import remove_stale_temps
from ov3dseg_core.mapping.map_file import MapFileError, is_map_file, load_map
from ov3dseg_core.mapping.voxel_map import VoxelMap, VoxelMapConfig
from ov3dseg_core.models.map_segmenter import resolve_checkpoint
from ov3dseg_core.models.semantic_stage import load_semantic_stage
from ov3dseg_core.msgs import MessageFormatError
from ov3dseg_core.msgs.image import image_to_numpy
from ov3dseg_core.msgs.pointcloud2 import pointcloud2_to_xyz
from ov3dseg_ros.conversions import (color_to_rgb, header, hit_markers, object_hit_msg, pointcloud2_msg,
                                     query_cloud_points, semantic_cloud_points, stamp_to_ns)
from ov3dseg_ros.executors import GroupSpec, NodeSpinner
from ov3dseg_ros.frame_queue import FrameQueue, PendingFrame
from ov3dseg_ros.input_diagnostics import InputMonitor
from ov3dseg_ros.msg import MapStatus
from ov3dseg_ros.params import NODE_NAME, MapperConfig, ParameterError, declare_config, on_set_parameters
from ov3dseg_ros.srv import EncodeText, LoadMap, Query, SaveMap, SetVocabulary
from ov3dseg_ros.semantic_stage import SemanticStage
from ov3dseg_ros.stamp_sync import StampSynchronizer
from ov3dseg_ros.tf_listener import TfListener
from ov3dseg_ros.timing import StageTimings

FrameStage = Callable[[RGBDFrame, VoxelMap], None]
"""A worker stage run on every posed RGB-D frame after geometric integration (e.g. a 2D/3D model writing
fused features with VoxelMap.integrate_features). frame.pose is T_map_camera."""

MAP_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
"""Map outputs (semantic cloud, query markers, status): reliable and latched, so a late subscriber (RViz) gets
the last one. Inputs use MapperConfig.sensor_qos (REP-2003 sensor data by default)."""
WARN_PERIOD_S = 5.0
"""Minimum seconds between two warnings of the same kind."""
ENCODER_WAIT_S = 60.0
"""How long ``text_encoder()`` waits for the background load by default (Python callers; callbacks never wait)."""
DROP_REASONS = ("tf_timeout", "no_camera_info", "overflow", "bad_input", "time_jump")
MAP_SUFFIX = ".safetensors"
"""Suffix of the map files that ~/save_map writes."""


class MappingNode(Node):
    """ROS 2 node ``ov3dseg_mapper``; see the module docstring and README for topics, services and parameters.

    Raises ov3dseg_ros.params.ParameterError at construction for invalid parameters.
    """

    def __init__(self, *, context=None, parameter_overrides=None, cli_args=None):
        super().__init__(NODE_NAME, context=context, parameter_overrides=parameter_overrides, cli_args=cli_args)
        try:
            self.config: MapperConfig = declare_config(self)
        except ParameterError:
            super().destroy_node()
            raise
        cfg = self.config
        self.map_directory = Path(cfg.map_directory or os.getcwd()).expanduser().resolve()
        """The only directory ~/save_map and ~/load_map use (parameter map_directory)."""
        if not self.map_directory.is_dir():
            super().destroy_node()
            raise ParameterError(f"{NODE_NAME}: parameter 'map_directory': {self.map_directory} is not a directory")
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.semantic: SemanticStage | None = None
        self.query_calibration: QueryCalibration = (
            FEATURE_CALIBRATION if cfg.feature_dim else LABEL_CALIBRATIONS.get(cfg.text_encoder, FEATURE_CALIBRATION))
        """Threshold and floor of the /query decision: the model checkpoint's, else built in (README, /query)."""
        if cfg.model:
            try:
                model = load_semantic_stage(cfg.model, device=cfg.device, policy=cfg.keyframe_policy(),
                                            object_score=cfg.object_score)
                self.query_calibration = read_calibration(resolve_checkpoint(cfg.model))
            except (OSError, ValueError, RuntimeError) as exc:  # RuntimeError: weights of another architecture
                super().destroy_node()
                raise ParameterError(f"{NODE_NAME}: parameter 'model': {exc}") from None
            if cfg.feature_dim not in (0, model.feature_dim):
                super().destroy_node()
                raise ParameterError(f"{NODE_NAME}: feature_dim {cfg.feature_dim} does not match model "
                                     f"{cfg.model!r} ({model.feature_dim}-d features); leave it 0")
            self.semantic = SemanticStage(model, cfg.model_rate_hz, cfg.model_window_radius,
                                          on_error=self._on_model_error, on_pass=self._map_changed,
                                          threads=cfg.threads)
        self.voxel_map = self._initial_map(cfg)
        self.timings = StageTimings()
        self.counters: Counter[str] = Counter()
        self._counters_lock = threading.Lock()
        self.tf_buffer = TfBuffer(cache_time_s=cfg.tf_cache_s)
        self.queue = FrameQueue(cfg.queue_size, int(cfg.tf_timeout_s * 1e9))
        self._stages: list[tuple[str, FrameStage]] = [("integrate", self._integrate_geometry)]
        if self.semantic is not None:
            self._stages.append(("model", self.semantic))
        self._versions = itertools.count(1)
        self._map_version = 0
        self._published_version = -1
        self._last_stamp_ns = 0
        self._cameras: dict[str, PinholeCamera | str] = {}  # camera namespace -> intrinsics or why they are unusable
        self._warners: dict[str, object] = {}
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)

        self._groups = {name: MutuallyExclusiveCallbackGroup()
                        for name in ("tf", "sensors", "map_services", "text_services", "outputs")}
        self._groups["query"] = ReentrantCallbackGroup()
        groups = self._groups
        self.tf_listener = TfListener(self, self.tf_buffer, time_jump_s=cfg.time_jump_s,
                                      on_time_jump=self._on_time_jump, on_update=self.queue.notify,
                                      callback_group=groups["tf"], guard=self._safe_callback,
                                      qos=cfg.sensor_qos("tf"))
        streams = ("color", "depth", "semantic") if cfg.label_names else ("color", "depth")
        self._syncs = {ns: StampSynchronizer(streams, int(cfg.sync_tolerance_s * 1e9), depth=2 * cfg.queue_size)
                       for ns in cfg.cameras}
        self._inputs = {topic: InputMonitor(topic) for topic in self._input_topics(streams)}
        for ns in cfg.cameras:
            for stream in streams:
                on_image = self._safe_subscription(f"{stream} image",
                                                   lambda m, i, ns=ns, s=stream: self._on_image(ns, s, m, i))
                self.create_subscription(Image, cfg.topic(ns, stream), on_image, cfg.sensor_qos("image"),
                                         callback_group=groups["sensors"])
            self.create_subscription(
                CameraInfo, cfg.topic(ns, "camera_info"),
                self._safe_subscription("camera_info", lambda m, i, ns=ns: self._on_camera_info(ns, m, i)),
                cfg.sensor_qos("camera_info"), callback_group=groups["sensors"])
        for topic in cfg.lidar_topics:
            self.create_subscription(PointCloud2, topic,
                                     self._safe_subscription("cloud", lambda m, i, t=topic: self._on_cloud(t, m, i)),
                                     cfg.sensor_qos("lidar"), callback_group=groups["sensors"])

        self.cloud_pub = self.create_publisher(PointCloud2, "ov3dseg/semantic_cloud", MAP_QOS)
        self.marker_pub = self.create_publisher(MarkerArray, "ov3dseg/query_markers", MAP_QOS)
        self.status_pub = self.create_publisher(MapStatus, "ov3dseg/status", MAP_QOS)
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._query_slots = threading.BoundedSemaphore(cfg.query_threads)
        self.create_service(Query, "query", self._safe_service("/query", self._on_query),
                            qos_profile=QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=cfg.query_queue_depth,
                                                   reliability=ReliabilityPolicy.RELIABLE),
                            callback_group=groups["query"])
        for srv_type, name, callback, group in (
                (SaveMap, "~/save_map", self._on_save_map, "map_services"),
                (LoadMap, "~/load_map", self._on_load_map, "map_services"),
                (Trigger, "~/clear", self._on_clear, "map_services"),
                (SetVocabulary, "~/set_vocabulary", self._on_set_vocabulary, "text_services"),
                (EncodeText, "~/encode_text", self._on_encode_text, "text_services")):
            self.create_service(srv_type, name, self._safe_service(name, callback), callback_group=groups[group])
        if cfg.cloud_rate_hz > 0:
            self.create_timer(1.0 / cfg.cloud_rate_hz, self._safe_callback("semantic cloud", self._publish_cloud),
                              callback_group=groups["outputs"], clock=self._steady)
        self.create_timer(1.0 / cfg.status_rate_hz, self._safe_callback("status", self._publish_periodic),
                          callback_group=groups["outputs"], clock=self._steady)

        self._encoder = concurrent.futures.Future()
        if cfg.text_encoder or self.semantic is not None:
            threading.Thread(target=self._load_text_encoder, name="ov3dseg_text_encoder", daemon=True).start()
        else:
            self._encoder.set_result(None)
        for directory in {self.map_directory, *([self._resolve_map_path(cfg.map_file).parent] if cfg.map_file
                                                 else [])}:
            self._remove_stale_temps(directory)
        self._stop = threading.Event()
        self._status_due = threading.Event()
        self.busy = False
        """True while the worker processes a frame (a replay's settle timeout only runs while it is idle)."""
        self._worker = threading.Thread(target=self._work, name="ov3dseg_worker", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"mapping {', '.join(cfg.cameras) or 'no cameras'}"
            f"{' + ' + ', '.join(cfg.lidar_topics) if cfg.lidar_topics else ''} into '{cfg.map_frame}' at "
            f"{cfg.voxel_size * 100:g} cm voxels" + (f", {len(cfg.label_names)} labels" if cfg.label_names else ""))

    def spin_specs(self) -> list[GroupSpec]:
        """The executors this node needs (ov3dseg_ros.executors.NodeSpinner): one single-threaded executor per
        callback group; /query gets 2 x query_threads (half wait for a free query slot, then answer busy). The
        node's default group (parameter services, /clock) shares the TF thread: both are short callbacks."""
        groups, threads = self._groups, self.config.query_threads
        return [GroupSpec("tf", (groups["tf"], self.default_callback_group)),
                GroupSpec("sensors", (groups["sensors"],)),
                GroupSpec("query", (groups["query"],), 2 * threads),
                GroupSpec("map_services", (groups["map_services"],)),
                GroupSpec("text_services", (groups["text_services"],)),
                GroupSpec("outputs", (groups["outputs"],))]

    def spinner(self) -> NodeSpinner:
        """A NodeSpinner over ``spin_specs()`` (call ``start()``, later ``shutdown()``)."""
        return NodeSpinner(self, self.spin_specs(), self.context)

    # -- fail-safe callbacks -------------------------------------------------------------------------------
    def _callback_failed(self, name: str, exc: Exception) -> str:
        self._count("callback_errors", f"callback_errors_{name}")
        self.get_logger().error(f"{name} callback failed: {exc!r} ({self.counters['callback_errors']} callback "
                                "errors so far)", throttle_duration_sec=WARN_PERIOD_S)
        return f"internal error in {name}: {exc!r}"

    def _safe_callback(self, name: str, callback: Callable) -> Callable:
        """``callback`` (subscription or timer) that logs and counts an exception instead of raising it (an
        exception in an rclpy callback would end spinning, or the process)."""
        def run(*args):
            try:
                callback(*args)
            except Exception as exc:
                self._callback_failed(name, exc)
        return run

    def _safe_subscription(self, name: str, callback: Callable) -> Callable:
        """``_safe_callback`` for a subscription callback(msg, info): rclpy passes the message info (publisher
        sequence numbers, for loss counting) to callbacks of two parameters."""
        run = self._safe_callback(name, callback)
        return lambda msg, info: run(msg, info)

    def _safe_service(self, name: str, callback: Callable) -> Callable:
        """Service ``callback(request, response)`` that answers success false, naming the error, instead of
        raising."""
        def run(request, response):
            try:
                return callback(request, response)
            except Exception as exc:
                answer = type(response)()
                answer.success, answer.message = False, self._callback_failed(name, exc)
                return answer
        return run

    # -- life cycle ----------------------------------------------------------------------------------------
    def _input_topics(self, streams: tuple[str, ...]) -> list[str]:
        """Every subscribed sensor topic (images, camera_info, LiDAR), as /diagnostics reports them."""
        cfg = self.config
        cameras = [cfg.topic(ns, s) for ns in cfg.cameras for s in (*streams, "camera_info")]
        return [*cameras, *cfg.lidar_topics]

    def _initial_map(self, cfg: MapperConfig) -> VoxelMap:
        """An empty map from the parameters, or the ``initial_map`` file (which must match them)."""
        feature_dim = self.semantic.model.feature_dim if self.semantic is not None else cfg.feature_dim
        config = VoxelMapConfig(voxel_size=cfg.voxel_size, num_labels=len(cfg.label_names),
                                feature_dim=feature_dim, max_voxels=cfg.max_voxels,
                                clearing_radius=cfg.clearing_radius, device=cfg.device)
        if not cfg.initial_map:
            return VoxelMap(config, label_names=cfg.label_names or None)
        try:
            voxel_map = load_map(cfg.initial_map, config=config)
        except (OSError, ValueError) as exc:
            super().destroy_node()
            raise ParameterError(f"{NODE_NAME}: parameter 'initial_map': {exc}") from None
        voxel_map.label_names = cfg.label_names or None
        return voxel_map

    def add_frame_stage(self, name: str, stage: FrameStage) -> None:
        """Run ``stage(frame, voxel_map)`` in the worker on every integrated RGB-D frame (timed as ``name``)."""
        self._stages.append((name, stage))

    def destroy_node(self) -> None:
        self._stop.set()
        self.queue.notify()
        if self._worker.is_alive() and threading.current_thread() is not self._worker:
            self._worker.join(timeout=10.0)
        if self.semantic is not None:
            self.semantic.close()
        super().destroy_node()

    def _map_changed(self) -> None:
        """The cloud's content changed (a frame, a model pass, the vocabulary, a load or a clear): publish it again.
        Called from several threads; ``next`` on the counter is atomic, so no bump is lost to another."""
        self._map_version = next(self._versions)

    def _on_model_error(self, exc: Exception) -> None:
        """A model pass failed (SemanticStage's thread): logged and counted; mapping goes on."""
        self._count("model_errors")
        self.get_logger().error(f"model pass failed: {exc!r} ({self.counters['model_errors']} so far)",
                                throttle_duration_sec=WARN_PERIOD_S)

    def _on_set_parameters(self, params):
        new, result = on_set_parameters(self.config, params)
        if new is not None:
            if new.vocabulary != self.config.vocabulary:
                self._map_changed()
            self.config = new
            self.queue.timeout_ns = int(new.tf_timeout_s * 1e9)
        return result

    def text_encoder(self, timeout_s: float = ENCODER_WAIT_S):
        """The text encoder (a CachedTextEncoder), waiting for its background load; None when none is configured.

        Raises TimeoutError while it is still loading, and the load's exception when it failed.
        """
        try:
            loaded = self._encoder.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"text encoder {self.config.text_encoder!r} is still loading") from None
        return None if loaded is None else loaded[0]

    def _load_text_encoder(self) -> None:
        """Background start-up: build the text encoder and embed the label names once (never in a callback).

        Resolves ``self._encoder`` to (encoder, embed(texts) with the label template, label embeddings or None).
        """
        try:
            from ov3dseg_core.models.text import apply_template, build_text_encoder
            start = time.perf_counter()
            if self.semantic is not None:  # queries live in the model's text space, with its prompt template
                encoder, embed = self.semantic.model.text_encoder, self.semantic.model.embed
            else:
                encoder = build_text_encoder({"type": self.config.text_encoder, "device": self.config.device})
                template = self.config.label_template

                def embed(texts: list[str]):
                    return encoder.encode(apply_template(texts, template))

            names = self.config.label_names
            self._encoder.set_result((encoder, embed, embed(names) if names else None))
            self.get_logger().info(f"text encoder {encoder.name!r} ready "
                                   f"({time.perf_counter() - start:.1f} s)")
        except Exception as exc:  # reported by every /query; the node keeps mapping
            self.get_logger().error(f"text encoder {self.config.text_encoder!r} failed to load: {exc}")
            self._encoder.set_exception(exc)

    # -- inputs (callbacks: file and return) ---------------------------------------------------------------
    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _received(self, topic: str, msg, info) -> int | None:
        """Account for one input message (losses before it, rate, delay); its stamp (ns), or None when the stamp is
        malformed (counted as a bad message)."""
        monitor = self._inputs[topic]
        lost = monitor.received(info)
        if lost:
            self._warn("lost", f"{lost} messages on {topic} were lost before reaching the node "
                               f"({monitor.lost} so far; raise the qos_*_depth parameters?)")
        try:
            stamp_ns = stamp_to_ns(msg.header.stamp)
        except ValueError as exc:
            self._count_bad_input(f"{topic}: {exc}")
            return None
        monitor.tick(stamp_ns, self._now_ns())
        return stamp_ns

    def _on_image(self, camera: str, stream: str, msg: Image, info=None) -> None:
        stamp_ns = self._received(self.config.topic(camera, stream), msg, info)
        if stamp_ns is None:
            return
        matched = self._syncs[camera].add(stream, stamp_ns, msg)
        if matched is not None:
            _, messages = matched
            depth = messages["depth"]
            self._enqueue(PendingFrame("rgbd", camera, depth.header.frame_id.lstrip("/"),
                                       stamp_to_ns(depth.header.stamp), self._now_ns(), messages))

    def _on_camera_info(self, camera: str, msg: CameraInfo, info=None) -> None:
        self._received(self.config.topic(camera, "camera_info"), msg, info)
        try:
            self._cameras[camera] = PinholeCamera.from_camera_info(msg)
        except ValueError as exc:
            self._cameras[camera] = f"invalid camera_info: {exc}"
        self.queue.notify()

    def _on_cloud(self, topic: str, msg: PointCloud2, info=None) -> None:
        stamp_ns = self._received(topic, msg, info)
        if stamp_ns is None:
            return
        self._enqueue(PendingFrame("cloud", topic, msg.header.frame_id.lstrip("/"), stamp_ns, self._now_ns(),
                                   {"cloud": msg}))

    def _count(self, *keys: str) -> None:
        with self._counters_lock:  # callbacks run concurrently
            self.counters.update(keys)

    def _enqueue(self, frame: PendingFrame) -> None:
        self._count("received")
        if not frame.frame_id:
            self._drop(frame, "bad_input", "empty header.frame_id")
            return
        for old in self.queue.push(frame):
            self._drop(old, "overflow", f"queue full ({self.queue.maxsize} frames): the oldest frame gives way")

    def _on_time_jump(self, stamp_ns: int) -> None:
        """An edge of the TF tree jumped back to ``stamp_ns``: drop the waiting frames from before the jump (stamped
        more than time_jump_s after it) that its transforms no longer cover."""
        horizon = stamp_ns + int(self.config.time_jump_s * 1e9)
        for frame in self.queue.remove(lambda f: f.stamp_ns > horizon and not self._is_ready(f)):
            self._drop(frame, "time_jump", "a transform on its path jumped back in time; frames from before the "
                                            "jump are discarded")

    # -- bookkeeping ---------------------------------------------------------------------------------------
    def _warn(self, kind: str, text: str) -> None:
        """A warning rate-limited per ``kind`` (one logger per kind, so kinds do not hide each other)."""
        logger = self._warners.get(kind)
        if logger is None:
            logger = self._warners.setdefault(kind, self.get_logger().get_child(kind))
        logger.warning(text, throttle_duration_sec=WARN_PERIOD_S)

    def _drop(self, frame: PendingFrame, reason: str, detail: str) -> None:
        self._count("dropped", f"dropped_{reason}")
        self._warn(reason, f"dropped {frame.kind} frame from {frame.source} at {frame.stamp_ns / 1e9:.3f} s: "
                           f"{detail} ({self.counters[f'dropped_{reason}']} dropped for this reason)")
        self._status_due.set()  # the worker publishes it: a sensor callback must not wait for the map's lock
        self.queue.notify()

    def _count_bad_input(self, detail: str) -> None:
        self._count("bad_messages")
        self._warn("bad_message", f"ignored a malformed message: {detail} ({self.counters['bad_messages']} so far)")

    # -- worker --------------------------------------------------------------------------------------------
    def _work(self) -> None:
        torch.set_num_threads(self.config.threads)  # intra-op threads of this thread (OpenMP: per thread)
        version = 0
        step = self._safe_callback("worker", self._work_step)
        while not self._stop.is_set():
            version = self.queue.wait(version, timeout_s=0.05)
            step()

    def _work_step(self) -> None:
        """Integrate every frame that is ready, drop the expired ones, publish the status when due."""
        while not self._stop.is_set():
            frame, expired = self.queue.pop_ready(self._now_ns(), self._is_ready)
            for old in expired:
                self._drop(old, *self._why_not_ready(old))
            if frame is None:
                break
            self.busy = True
            try:
                self._process(frame)
            finally:
                self.busy = False
        if self._status_due.is_set():
            self._status_due.clear()
            self._publish_status()

    def _is_ready(self, frame: PendingFrame) -> bool:
        if frame.kind == "rgbd" and not isinstance(self._cameras.get(frame.source), PinholeCamera):
            return False
        return self.tf_buffer.can_transform(self.config.map_frame, frame.frame_id, frame.stamp_ns)

    def _why_not_ready(self, frame: PendingFrame) -> tuple[str, str]:
        camera = self._cameras.get(frame.source)
        if frame.kind == "rgbd" and not isinstance(camera, PinholeCamera):
            topic = self.config.topic(frame.source, "camera_info")
            return "no_camera_info", f"{camera or 'no camera_info received'} on {topic}"
        try:
            self.tf_buffer.lookup(self.config.map_frame, frame.frame_id, frame.stamp_ns)
        except TransformError as exc:
            return "tf_timeout", f"no transform {self.config.map_frame} <- {frame.frame_id} within " \
                                 f"{self.queue.timeout_ns / 1e9:g} s: {exc}"
        return "tf_timeout", "transform arrived as the frame expired"

    def _process(self, frame: PendingFrame) -> None:
        start = time.perf_counter()
        try:
            if frame.kind == "rgbd":
                self._process_rgbd(frame)
            else:
                self._process_cloud(frame)
        except (MessageFormatError, ValueError, TransformError) as exc:
            self._drop(frame, "bad_input", str(exc))
            return
        except Exception as exc:  # a bug or a model failure must not kill the worker thread
            self.get_logger().error(f"frame from {frame.source} at {frame.stamp_ns / 1e9:.3f} s failed: {exc!r}",
                                    throttle_duration_sec=WARN_PERIOD_S)
            self._drop(frame, "bad_input", f"internal error {exc!r}")
            return
        self.timings.add(f"{frame.kind}_total", time.perf_counter() - start)
        self._count("integrated")
        self._map_changed()
        self._publish_status()

    def _process_rgbd(self, frame: PendingFrame) -> None:
        cfg = self.config
        with self.timings.measure("decode"):
            messages = frame.messages
            depth = depth_to_metres(image_to_numpy(messages["depth"]), cfg.depth_scale or None)
            color = color_to_rgb(messages["color"])
            if color.shape[:2] != depth.shape:
                raise ValueError(f"colour image {color.shape[1]}x{color.shape[0]} and depth image "
                                 f"{depth.shape[1]}x{depth.shape[0]} differ (depth must be registered to colour)")
            labels = self._decode_labels(messages["semantic"], depth.shape) if "semantic" in messages else None
            camera = self._camera_for(frame.source, depth.shape)
        with self.timings.measure("tf_lookup"):
            T_map_camera = self.tf_buffer.lookup(cfg.map_frame, frame.frame_id, frame.stamp_ns)
        rgbd = RGBDFrame(color=color, depth=depth, camera=camera, pose=T_map_camera, stamp_ns=frame.stamp_ns,
                         labels=labels)
        # Stamp first: a cloud built while this frame integrates may lack part of it, never carry an older stamp.
        self._last_stamp_ns = frame.stamp_ns
        for name, stage in self._stages:
            with self.timings.measure(name):
                stage(rgbd, self.voxel_map)

    def _integrate_geometry(self, frame: RGBDFrame, voxel_map: VoxelMap) -> None:
        cfg = self.config
        points, colors, labels = frame_points(frame, cfg.depth_min_range, cfg.depth_max_range, cfg.depth_stride)
        voxel_map.integrate(points, colors=colors, labels=labels, sensor_origin=frame.pose[:3, 3])

    def _decode_labels(self, msg: Image, shape: tuple[int, int]) -> np.ndarray:
        if msg.encoding not in ("16UC1", "mono16"):
            raise ValueError(f"label image encoding {msg.encoding!r} is not 16UC1/mono16 class ids")
        labels = labels_from_u16(image_to_numpy(msg))
        if labels.shape != shape:
            raise ValueError(f"label image {labels.shape[1]}x{labels.shape[0]} and depth image "
                             f"{shape[1]}x{shape[0]} differ")
        unknown = labels >= len(self.config.label_names)
        if unknown.any():
            self._warn("unknown_label", f"label ids up to {int(labels.max())} but only "
                                        f"{len(self.config.label_names)} label_names: those pixels are unlabelled")
            labels[unknown] = -1
        return labels

    def _camera_for(self, camera: str, shape: tuple[int, int]) -> PinholeCamera:
        """Intrinsics matching an (H, W) image: camera_info as is, or scaled when the image is a uniform resize."""
        intrinsics = self._cameras[camera]
        height, width = shape
        if (intrinsics.width, intrinsics.height) == (width, height):
            return intrinsics
        factor = width / intrinsics.width
        if abs(intrinsics.height * factor - height) > 0.5:
            raise ValueError(f"depth image {width}x{height} does not match camera_info "
                             f"{intrinsics.width}x{intrinsics.height} (nor a uniform resize of it)")
        return intrinsics.scaled(factor)

    def _process_cloud(self, frame: PendingFrame) -> None:
        cfg = self.config
        with self.timings.measure("decode"):
            points, _ = pointcloud2_to_xyz(frame.messages["cloud"])
            points, _ = clean_points(points, cfg.lidar_min_range, cfg.lidar_max_range)
        with self.timings.measure("tf_lookup"):
            T_map_sensor = self.tf_buffer.lookup(cfg.map_frame, frame.frame_id, frame.stamp_ns)
        self._last_stamp_ns = frame.stamp_ns
        with self.timings.measure("integrate_cloud"):
            self.voxel_map.integrate(transform_points(T_map_sensor, points), sensor_origin=T_map_sensor[:3, 3])

    # -- outputs -------------------------------------------------------------------------------------------
    def _map_snapshot(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Consistent (positions, colours, labels, label confidences, instance ids) of the current map."""
        voxel_map = self.voxel_map
        with voxel_map.lock:
            positions, colors, instances = voxel_map.positions(), voxel_map.colors(), voxel_map.instances()
            if self.semantic is None:
                return (positions, colors, *voxel_map.labels(), instances)
            features, has_features = voxel_map.features(), voxel_map.feature_weights() > 0
        model = self.semantic.model
        labels, scores = model.classify(features, self.config.vocabulary or model.vocabulary)
        return (positions, colors, np.where(has_features, labels, -1), np.where(has_features, scores, 0.0),
                instances)

    def _publish_cloud(self) -> None:
        if self.cloud_pub.get_subscription_count() == 0 or self._published_version == self._map_version:
            return
        version = self._map_version
        with self.timings.measure("publish_cloud"):
            msg = pointcloud2_msg(semantic_cloud_points(*self._map_snapshot()), self._last_stamp_ns,
                                  self.config.map_frame)
            self.cloud_pub.publish(msg)
        self._published_version = version

    def status(self) -> MapStatus:
        """The current MapStatus (counters, map size, memory)."""
        voxel_map = self.voxel_map
        return MapStatus(
            header=header(self._last_stamp_ns, self.config.map_frame), num_voxels=len(voxel_map),
            voxel_size=float(voxel_map.config.voxel_size), frames_received=self.counters["received"],
            frames_integrated=self.counters["integrated"], frames_dropped=self.counters["dropped"],
            voxels_evicted=int(voxel_map.voxels_evicted), queue_depth=len(self.queue),
            memory_mb=voxel_map.memory_bytes() / 2**20, has_features=voxel_map.config.feature_dim > 0,
            label_names=list(self.config.label_names))

    def _publish_status(self) -> None:
        self.status_pub.publish(self.status())

    def _publish_periodic(self) -> None:
        status = self.status()
        self.status_pub.publish(status)
        values = {"frames received": status.frames_received, "frames integrated": status.frames_integrated,
                  "frames dropped": status.frames_dropped, "queue depth": status.queue_depth,
                  "voxels": status.num_voxels, "voxels evicted": status.voxels_evicted,
                  "memory MB": f"{status.memory_mb:.1f}", "unmatched images":
                  sum(s.discarded for s in self._syncs.values()), "bad messages": self.counters["bad_messages"],
                  "tf transforms": self.tf_listener.received, "tf time jumps": self.tf_listener.time_jumps,
                  "tf stamp 0 ignored": self.tf_listener.zero_stamps, "tf invalid": self.tf_listener.invalid,
                  "input messages lost": sum(m.lost for m in self._inputs.values()),
                  "callback errors": self.counters["callback_errors"], "queries busy": self.counters["query_busy"]}
        values.update({f"dropped {r}": self.counters[f"dropped_{r}"] for r in DROP_REASONS})
        if self.semantic is not None:
            values.update({"model passes": self.semantic.passes, "model windows superseded": self.semantic.superseded,
                           "model errors": self.counters["model_errors"],
                           "map instance ids": len(self.voxel_map.instance_table()),  # rows; ids are reused
                           **{f"model {b} branch runs": n for b, n in self.semantic.branch_passes.items()}})
        for stage, s in self.timings.summary().items():
            values[f"{stage} ms (mean/p95)"] = f"{s['mean_ms']:.2f}/{s['p95_ms']:.2f}"
        full = status.queue_depth >= self.queue.maxsize  # (levels are bytes: b"\x00" is truthy)
        diag = DiagnosticStatus(level=DiagnosticStatus.WARN if full else DiagnosticStatus.OK,
                                name=f"{self.get_name()}: mapping", hardware_id=self.get_name(),
                                message="queue full" if full else "ok",
                                values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
        now_ns, limits, name = self._now_ns(), self.config.input_limits(), self.get_name()
        inputs = [monitor.status(now_ns, limits, f"{name}: input {topic}", name)
                  for topic, monitor in self._inputs.items()]
        self.diagnostics_pub.publish(DiagnosticArray(header=header(now_ns, ""), status=[diag, *inputs]))

    # -- services ------------------------------------------------------------------------------------------
    def _on_query(self, request: Query.Request, response: Query.Response) -> Query.Response:
        if not self._query_slots.acquire(timeout=self.config.query_busy_s):
            self._count("query_busy")
            response.success = False
            response.message = f"busy: {self.config.query_threads} queries in progress; try again"
            return response
        try:
            with self.timings.measure("query"):
                response.success, response.message = self._answer_query(request, response)
        finally:
            self._query_slots.release()
        return response

    def _answer_query(self, request: Query.Request, response: Query.Response) -> tuple[bool, str]:
        try:
            text = validate_query(request.text, request.top_k, request.threshold)
            encoder, embed, label_embeddings = self._text_space()
        except QueryError as exc:
            return False, str(exc)
        voxel_map, cfg = self.voxel_map, self.config
        threshold, min_voxels = request.threshold or cfg.query_threshold, cfg.query_min_voxels
        top_k = min(request.top_k or cfg.query_max_points, cfg.query_max_points)
        if voxel_map.config.feature_dim > 0:
            if voxel_map.config.feature_dim != encoder.dim:
                return False, (f"map features are {voxel_map.config.feature_dim}-d but text encoder "
                               f"{encoder.name!r} gives {encoder.dim}-d embeddings")
            vocabulary = cfg.vocabulary or (self.semantic.model.vocabulary if self.semantic else cfg.label_names)
            query, negatives = query_embeddings(text, vocabulary, embed, encoder.encode)
            result = query_features(voxel_map, query, negatives, self.query_calibration, threshold, top_k,
                                    min_voxels, label=text)
        elif label_embeddings is not None:
            query, negatives = query_embeddings(text, cfg.label_names, embed, encoder.encode)
            result = query_labels(voxel_map, query, negatives, label_embeddings, cfg.label_names,
                                  self.query_calibration, threshold, top_k, min_voxels)
        else:
            return False, "the map has neither features nor label names (parameter label_names) to match text to"
        response.cloud = pointcloud2_msg(query_cloud_points(result.positions, result.scores), self._last_stamp_ns,
                                         cfg.map_frame)
        response.hits = [object_hit_msg(group) for group in result.objects[:cfg.query_max_hits]]
        response.found, response.threshold_used, response.max_score = \
            result.found, result.threshold, result.max_score
        self.marker_pub.publish(hit_markers(response.hits, self._last_stamp_ns, cfg.map_frame))
        return True, answer_summary(text, result, min_voxels)

    def _text_space(self):
        """(encoder, embed(texts) with the prompt template, label-name embeddings or None) once loaded; QueryError
        saying why text cannot be embedded now (still loading: answered at once, never waited for in a callback;
        failed; none configured)."""
        try:
            encoder = self.text_encoder(timeout_s=0.0)
        except TimeoutError as exc:
            raise QueryError(f"{exc}; try again") from None
        except Exception as exc:
            raise QueryError(f"text encoder {self.config.text_encoder!r} failed to load: {exc}") from None
        if encoder is None:
            raise QueryError("no text encoder configured (parameter text_encoder is empty)")
        return self._encoder.result()

    def _on_encode_text(self, request: EncodeText.Request, response: EncodeText.Response) -> EncodeText.Response:
        try:
            texts = [validate_query(text, 0, 0.0) for text in request.texts]
            if not texts:
                raise QueryError("no texts given")
            encoder, embed, _ = self._text_space()
        except QueryError as exc:
            response.success, response.message = False, str(exc)
            return response
        embeddings = embed(texts).detach().cpu().numpy().astype(np.float32)
        response.encoder, response.dim = encoder.name, embeddings.shape[1]
        response.prompt_template = self.semantic.model.template if self.semantic else self.config.label_template
        response.embeddings = embeddings.reshape(-1).tolist()
        response.success, response.message = True, f"{len(texts)} x {embeddings.shape[1]} embeddings ({encoder.name})"
        return response

    def _on_set_vocabulary(self, request: SetVocabulary.Request,
                           response: SetVocabulary.Response) -> SetVocabulary.Response:
        if self.semantic is None:
            response.success = False
            response.message = "no model (parameter model): the map's labels come from parameter label_names"
            return response
        try:
            names = [validate_query(name, 0, 0.0) for name in request.names]
        except QueryError as exc:
            response.success, response.message = False, f"vocabulary name: {exc}"
            return response
        result = self.set_parameters([Parameter("vocabulary", Parameter.Type.STRING_ARRAY, names)])[0]
        response.names = self.config.vocabulary or self.semantic.model.vocabulary
        response.success = result.successful
        response.message = (f"{len(response.names)} names label the semantic cloud" if result.successful
                            else result.reason)
        return response

    def _resolve_map_path(self, path: str) -> Path:
        """``path`` made absolute in map_directory, with '..' and links resolved."""
        return (self.map_directory / Path(path).expanduser()).resolve()

    def _service_map_path(self, path: str, writing: bool) -> Path:
        """The map file a ~/save_map or ~/load_map request names (empty: parameter map_file), inside map_directory;
        MapFileError when it leaves the directory, or (``writing``) lies in a missing directory, lacks the map
        suffix or would overwrite a file that is not a map file."""
        path = path or self.config.map_file
        if not path:
            raise MapFileError("no path given and parameter map_file is empty")
        target = self._resolve_map_path(path)
        if not target.is_relative_to(self.map_directory):
            raise MapFileError(f"{path}: outside the map directory {self.map_directory} (parameter map_directory)")
        if writing:
            if target.suffix != MAP_SUFFIX:
                raise MapFileError(f"{path}: map files end in {MAP_SUFFIX}")
            if not target.parent.is_dir():
                raise MapFileError(f"{path}: directory {target.parent} does not exist (it is not created)")
            if target.exists() and not is_map_file(target):
                raise MapFileError(f"{path}: exists and is not an ov3dseg map file; refusing to overwrite it")
        return target

    def _remove_stale_temps(self, directory: Path) -> None:
        removed = remove_stale_temps(directory, suffix=MAP_SUFFIX)
        if removed:
            self.get_logger().warning(f"removed {len(removed)} temporary files left by interrupted saves in "
                                      f"{directory}: {', '.join(p.name for p in removed[:5])}")

    def save_map(self, path: str = "") -> str:
        """Save the current map atomically to ``path`` (a trusted caller: written where it says; default:
        parameter map_file in map_directory); returns a summary line. ~/save_map checks its path first."""
        target = Path(path) if path else self._service_map_path("", writing=True)
        voxel_map = self.voxel_map
        with self.timings.measure("save_map"):
            voxel_map.save(target)
        return f"saved {len(voxel_map)} voxels to {target}"

    def _on_save_map(self, request: SaveMap.Request, response: SaveMap.Response) -> SaveMap.Response:
        try:
            target = self._service_map_path(request.path, writing=True)
            response.success, response.message = True, self.save_map(str(target))
        except (OSError, ValueError) as exc:
            response.success, response.message = False, f"save failed: {exc}"
        return response

    def _on_load_map(self, request: LoadMap.Request, response: LoadMap.Response) -> LoadMap.Response:
        try:
            path = self._service_map_path(request.path, writing=False)
            with self.timings.measure("load_map"):
                loaded = load_map(path, config=self.voxel_map.config)
            if loaded.label_names is not None and loaded.label_names != self.config.label_names:
                raise MapFileError(f"{path}: the map's label names {loaded.label_names} differ from parameter "
                                   f"label_names {self.config.label_names}")
        except (OSError, ValueError) as exc:
            response.success, response.message = False, f"load failed: {exc}"
            return response
        loaded.label_names = self.config.label_names or None
        self.voxel_map = loaded  # the worker picks it up with its next frame
        self._map_changed()
        response.success, response.message = True, f"loaded {len(loaded)} voxels from {path}"
        return response

    def _on_clear(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        voxel_map = self.voxel_map
        with voxel_map.lock:
            count = len(voxel_map)
            voxel_map.clear()
        self._map_changed()
        response.success, response.message = True, f"cleared {count} voxels"
        return response


def answer_summary(text: str, result: QueryResult, min_voxels: int) -> str:
    """One line: found or not, the best object (where, how sure), or how close the best voxel came."""
    if not result.found:
        return (f"{text!r} not found: no group of >= {min_voxels} voxels with relevancy >= {result.threshold:.2f} "
                f"(best voxel {result.max_score:.2f})")
    best = result.objects[0]
    where = ", ".join(f"{v:.2f}" for v in best.center)
    count = len(result.objects)
    return (f"found {text!r}: {count} object{'s' if count > 1 else ''}; best {best.label!r} at ({where}) m, "
            f"confidence {best.confidence:.2f}, {best.num_voxels} voxels")


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run ov3dseg_ros mapping_node`` (parameters and remappings from --ros-args)."""
    rclpy.init(args=args)
    try:
        node = MappingNode()
    except ParameterError as exc:
        print(exc, file=sys.stderr)
        rclpy.try_shutdown()
        return 1
    spinner = node.spinner().start()
    try:
        while node.context.ok():  # rclpy's SIGINT handler shuts the context down
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        spinner.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
