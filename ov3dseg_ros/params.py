"""Parameters of the mapping node: one dataclass is the single source of truth.

``MapperConfig`` holds every parameter with its default, description, range and read-only flag. The node
declares ROS parameters from it (``declare_config``), ``config/default.yaml`` is generated from it
(``render_default_yaml``; a test keeps the two identical), and ``graph.py`` coerces YAML values with it.
"""
from __future__ import annotations

import array
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.exceptions import InvalidTopicNameException, ParameterException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.validate_full_topic_name import validate_full_topic_name

from ov3dseg_core.mapping.query import DEFAULT_MIN_VOXELS, MAX_OBJECTS
from ov3dseg_core.models.semantic_stage import OBJECT_SCORE, KeyFramePolicy
from ov3dseg_ros.input_diagnostics import InputLimits

NODE_NAME = "ov3dseg_mapper"
RELIABILITIES = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}
"""Values of the qos_*_reliability parameters."""
QOS_INPUTS = ("image", "camera_info", "lidar", "tf")
"""Input kinds with their own qos_<kind>_reliability and qos_<kind>_depth parameters."""


class ParameterError(ValueError):
    """A parameter value the mapping node cannot run with; the message names the parameter and the rule."""


def _p(default: Any, description: str, *, lo: float | None = None, hi: float | None = None,
       read_only: bool = True, constraints: str = "") -> Any:
    meta = {"description": description, "range": (lo, hi) if lo is not None else None,
            "read_only": read_only, "constraints": constraints}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class MapperConfig:
    """Parameters of the ``ov3dseg_mapper`` node (units: metres, seconds, hertz)."""

    map_frame: str = _p("map", "fixed frame of the voxel map and of every output (REP-105)")
    cameras: list[str] = _p(
        ["/camera"], "RGB-D camera namespaces; each gives {ns}/color/image_raw, {ns}/depth/image_raw (registered "
        "to colour), {ns}/color/camera_info and, with label_names, {ns}/semantic/image_raw",
        constraints="absolute topic namespaces, at least one unless lidar_topics is set")
    lidar_topics: list[str] = _p(["/lidar/points"], "PointCloud2 topics integrated as geometry; empty: no LiDAR",
                                 constraints="absolute topic names")
    label_names: list[str] = _p(
        [], "class names of the 16UC1 label images (id i = label_names[i], 65535 = unlabelled); non-empty "
        "subscribes {ns}/semantic/image_raw and every RGB-D frame then needs its label image",
        constraints="unique, non-empty names")
    voxel_size: float = _p(0.05, "voxel edge length, metres", lo=0.005, hi=1.0)
    max_voxels: int = _p(5_000_000, "voxel budget; beyond it the voxels farthest from the sensor are evicted",
                         lo=1_000, hi=2_000_000_000)
    feature_dim: int = _p(0, "length of the per-voxel features written by model stages (0 = none); with features, "
                          "/query matches text against them", lo=0, hi=4096)
    clearing_radius: float = _p(0.0, "evict voxels farther than this from the sensor, metres; 0 = keep all",
                                lo=0.0, hi=1000.0)
    device: str = _p("cpu", "torch device of the map and model stages", constraints="cpu, cuda or cuda:N")
    depth_scale: float = _p(0.0, "depth units per metre of integer depth images (TUM: 5000); 0 = 16UC1 in mm",
                            lo=0.0, hi=100_000.0)
    depth_min_range: float = _p(0.1, "closest depth used, metres", lo=0.0, hi=100.0, read_only=False,
                                constraints="< depth_max_range")
    depth_max_range: float = _p(10.0, "farthest depth used, metres", lo=0.0, hi=100.0, read_only=False)
    depth_stride: int = _p(1, "use every n-th depth pixel in both directions", lo=1, hi=16, read_only=False)
    lidar_min_range: float = _p(0.3, "closest LiDAR return used, metres", lo=0.0, hi=1000.0, read_only=False,
                                constraints="< lidar_max_range")
    lidar_max_range: float = _p(50.0, "farthest LiDAR return used, metres", lo=0.0, hi=1000.0, read_only=False)
    sync_tolerance_s: float = _p(0.02, "colour, depth and label images within this of each other form one frame, s",
                                 lo=0.0, hi=1.0)
    tf_timeout_s: float = _p(1.0, "how long a frame waits for map <- sensor at its stamp before it is dropped, "
                             "seconds of ROS time since its arrival", lo=0.0, hi=60.0, read_only=False)
    tf_cache_s: float = _p(10.0, "history kept by the TF buffer, seconds", lo=1.0, hi=3600.0)
    time_jump_s: float = _p(1.0, "a /tf stamp this much older than the newest of its own edge (parent -> child) "
                            "restarts that edge's history and drops the frames waiting from before the jump (bag "
                            "loop), seconds; 0 = never", lo=0.0, hi=3600.0)
    queue_size: int = _p(10, "frames waiting for TF or for the worker; the oldest is dropped beyond it",
                         lo=1, hi=1000)
    qos_image_reliability: str = _p(
        "best_effort", "reliability of the colour, depth and label image subscriptions (REP-2003 sensor data: "
        "best_effort matches every publisher; reliable matches reliable publishers only, and then loses nothing)",
        constraints="best_effort or reliable")
    qos_image_depth: int = _p(5, "history depth of each image subscription, messages", lo=1, hi=1000)
    qos_camera_info_reliability: str = _p("best_effort", "reliability of the camera_info subscriptions",
                                          constraints="best_effort or reliable")
    qos_camera_info_depth: int = _p(5, "history depth of each camera_info subscription, messages", lo=1, hi=1000)
    qos_lidar_reliability: str = _p("best_effort", "reliability of the LiDAR PointCloud2 subscriptions",
                                    constraints="best_effort or reliable")
    qos_lidar_depth: int = _p(5, "history depth of each LiDAR subscription, messages", lo=1, hi=1000)
    qos_tf_reliability: str = _p(
        "best_effort", "reliability of the /tf subscription (best_effort: a lost transform is skipped and the next "
        "one delivered at once; reliable: delivered in order, so one lost packet holds every later transform back "
        "until it is resent, seconds under load); /tf_static is always reliable and transient-local",
        constraints="best_effort or reliable")
    qos_tf_depth: int = _p(100, "history depth of the /tf subscription, messages", lo=1, hi=10_000)
    cloud_rate_hz: float = _p(1.0, "semantic cloud publishing rate (only while subscribed); 0 = off",
                              lo=0.0, hi=100.0)
    status_rate_hz: float = _p(1.0, "status and diagnostics rate (status is also sent after every frame)",
                               lo=0.1, hi=100.0)
    diag_min_rate_hz: float = _p(1.0, "per-input diagnostics: WARN below this message rate (0 = no lower limit); "
                                 "ERROR when no message arrived within diag_window_s", lo=0.0, hi=1000.0,
                                 read_only=False)
    diag_max_rate_hz: float = _p(0.0, "per-input diagnostics: WARN above this message rate; 0 = no upper limit",
                                 lo=0.0, hi=10_000.0, read_only=False)
    diag_rate_tolerance: float = _p(0.1, "fraction a rate may pass diag_min_rate_hz / diag_max_rate_hz by before "
                                    "WARN", lo=0.0, hi=1.0, read_only=False)
    diag_window_s: float = _p(5.0, "sliding window of the per-input rate and delay statistics, seconds", lo=0.1,
                              hi=3600.0, read_only=False)
    diag_delay_warn_s: float = _p(1.0, "per-input diagnostics: WARN when a header stamp is older than this at "
                                  "receipt (or this far in the future), seconds", lo=0.0, hi=3600.0,
                                  read_only=False, constraints="< diag_delay_error_s")
    diag_delay_error_s: float = _p(5.0, "per-input diagnostics: ERROR when a header stamp is older than this at "
                                   "receipt, seconds", lo=0.0, hi=3600.0, read_only=False)
    map_file: str = _p("ov3dseg_map.safetensors", "map file used by ~/save_map and ~/load_map when no path is "
                       "given (relative paths lie in map_directory)", read_only=False)
    map_directory: str = _p("", "the only directory ~/save_map and ~/load_map read and write (relative paths are "
                            "resolved in it, '..' and links may not leave it, it is never created, and only map "
                            "files are overwritten); an existing directory; empty = the node's working directory "
                            "at start-up")
    initial_map: str = _p("", "map file loaded at start-up (empty: start with an empty map)")
    text_encoder: str = _p("minilm", "text encoder for queries against label names (loaded in the background at "
                           "start-up); empty: queries need a map with features")
    label_template: str = _p("{}", "prompt template for label names and query text, e.g. 'a {} in a scene'",
                             constraints="contains {} once")
    model: str = _p("", "open-vocabulary model run over the local map window, writing per-voxel features: "
                    "'default' (the embedded default), a checkpoint path (.safetensors; 3D models, or XMask3D whose "
                    "2D branch runs on key frames), or empty (none); its text encoder and prompt template then "
                    "answer /query and its feature size sets feature_dim")
    model_rate_hz: float = _p(1.0, "model passes over the local window per second of source time; 0 = after every "
                              "frame", lo=0.0, hi=100.0)
    model_window_radius: float = _p(4.0, "radius of the local window around the camera that a model pass covers, "
                                    "metres", lo=0.1, hi=1000.0)
    keyframe_min_translation: float = _p(
        0.5, "2D+3D models (XMask3D): a frame becomes a key frame for the 2D branch when the camera moved this far "
        "since the last key frame, metres (the first frame always is; 0 = every frame)", lo=0.0, hi=100.0)
    keyframe_min_rotation: float = _p(30.0, "2D+3D models: a frame also becomes a key frame when the "
                                      "camera turned this much since the last key frame, degrees", lo=0.0, hi=180.0)
    keyframe_max_interval_s: float = _p(5.0, "2D+3D models: a frame also becomes a key frame when this much "
                                        "source time passed since the last key frame, seconds; 0 = never by time",
                                        lo=0.0, hi=3600.0)
    keyframe_max_pending: int = _p(2, "2D+3D models: key frames waiting for the next model pass (each one is a 2D "
                                   "branch run; beyond it the oldest is dropped)", lo=1, hi=64)
    object_score: float = _p(OBJECT_SCORE, "models with an instance decoder (Mosaic3D): smallest object score (objectness) "
                             "kept as a map instance", lo=0.0, hi=1.0)
    vocabulary: list[str] = _p([], "class names that label the semantic cloud from per-voxel features and that a "
                               "/query on features must beat (empty: the model's training vocabulary); also set by "
                               "~/set_vocabulary", constraints="unique, non-empty names", read_only=False)
    query_threshold: float = _p(0.0, "relevancy threshold of a /query that sends threshold 0 (relevancy 0.5 = the "
                                "query ties its hardest negative); 0 = the calibrated default (the model "
                                "checkpoint's, else the text encoder's built-in one)", lo=0.0, hi=1.0,
                                read_only=False)
    query_max_hits: int = _p(100, "most objects in a /query answer and its markers (the best ones)", lo=1,
                             hi=MAX_OBJECTS, read_only=False)
    query_max_points: int = _p(100_000, "most voxels in a /query answer's cloud (best relevancy first; a request's "
                               "top_k 0 means this many)", lo=1, hi=10_000_000, read_only=False)
    query_threads: int = _p(2, "/query requests answered at the same time (one slow query does not hold up "
                            "another)", lo=1, hi=16)
    query_queue_depth: int = _p(100, "/query requests that can wait in the service's queue (beyond it DDS drops "
                                "the oldest, whose callers never get an answer)", lo=1, hi=10_000)
    query_busy_s: float = _p(1.0, "a /query that finds all query_threads busy for this long is answered "
                             "success false, 'busy: try again', seconds (so that a flood of slow queries is "
                             "answered, not queued for ever)", lo=0.0, hi=600.0, read_only=False)
    threads: int = _p(1, "torch threads of the mapping worker and the model (intra-op; on small CPUs one thread "
                      "leaves cores to the ROS callbacks)", lo=1, hi=256)
    query_min_voxels: int = _p(DEFAULT_MIN_VOXELS, "smallest object a /query reports, in voxels (smaller groups of "
                               "matching voxels are noise); found = at least one such object", lo=1,
                               hi=1_000_000, read_only=False)

    def validate(self) -> "MapperConfig":
        """Check the rules that ranges cannot express; raises ParameterError naming the parameter."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ParameterError(f"{f.name}: {value} is not a finite number")
            if f.type.startswith("list") and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise ParameterError(f"{f.name}: must be a list of strings, got {value!r}")
        if not self.map_frame or self.map_frame.startswith("/"):
            raise ParameterError(f"map_frame: {self.map_frame!r} must be a non-empty frame id without a leading '/'")
        if not self.cameras and not self.lidar_topics:
            raise ParameterError("cameras and lidar_topics are both empty: the node would have no input")
        for name in ("cameras", "lidar_topics"):
            for topic in getattr(self, name):
                try:
                    validate_full_topic_name(topic)
                except InvalidTopicNameException as exc:
                    raise ParameterError(f"{name}: {topic!r} is not an absolute topic name ({exc})") from None
        if len(set(self.cameras)) != len(self.cameras):
            raise ParameterError(f"cameras: duplicate namespaces in {self.cameras}")
        if any(not n.strip() for n in self.label_names) or len(set(self.label_names)) != len(self.label_names):
            raise ParameterError(f"label_names: names must be unique and non-empty, got {self.label_names}")
        if len(self.label_names) >= 65535:
            raise ParameterError(f"label_names: {len(self.label_names)} names do not fit 16-bit label images")
        for lo, hi in (("depth_min_range", "depth_max_range"), ("lidar_min_range", "lidar_max_range"),
                       ("diag_delay_warn_s", "diag_delay_error_s")):
            if not getattr(self, lo) < getattr(self, hi):
                raise ParameterError(f"{lo} ({getattr(self, lo)}) must be smaller than {hi} ({getattr(self, hi)})")
        if not (self.device == "cpu" or self.device == "cuda" or self.device.startswith("cuda:")):
            raise ParameterError(f"device: {self.device!r} is not cpu, cuda or cuda:N")
        if any(not n.strip() for n in self.vocabulary) or len(set(self.vocabulary)) != len(self.vocabulary):
            raise ParameterError(f"vocabulary: names must be unique and non-empty, got {self.vocabulary}")
        for kind in QOS_INPUTS:
            reliability = getattr(self, f"qos_{kind}_reliability")
            if reliability not in RELIABILITIES:
                raise ParameterError(f"qos_{kind}_reliability: {reliability!r} is not one of {sorted(RELIABILITIES)}")
        if self.label_template.count("{}") != 1:
            raise ParameterError(f"label_template: {self.label_template!r} must contain '{{}}' exactly once")
        return self

    def sensor_qos(self, kind: str) -> QoSProfile:
        """Subscription QoS of one input kind ('image', 'camera_info', 'lidar' or 'tf'): KEEP_LAST, volatile, with
        this config's reliability and depth (SensorDataQoS by default)."""
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=getattr(self, f"qos_{kind}_depth"),
                          reliability=RELIABILITIES[getattr(self, f"qos_{kind}_reliability")],
                          durability=DurabilityPolicy.VOLATILE)

    def input_limits(self) -> InputLimits:
        """Thresholds of the per-input diagnostics (the diag_* parameters)."""
        return InputLimits(self.diag_min_rate_hz, self.diag_max_rate_hz, self.diag_rate_tolerance,
                           self.diag_window_s, self.diag_delay_warn_s, self.diag_delay_error_s)

    def keyframe_policy(self) -> KeyFramePolicy:
        """When a frame becomes a key frame of a 2D+3D model (the keyframe_* parameters)."""
        return KeyFramePolicy(self.keyframe_min_translation, self.keyframe_min_rotation,
                              self.keyframe_max_interval_s, self.keyframe_max_pending)

    def topic(self, camera: str, stream: str) -> str:
        """Input topic of one camera: stream is 'color', 'depth', 'camera_info' or 'semantic'."""
        suffix = {"color": "color/image_raw", "depth": "depth/image_raw", "camera_info": "color/camera_info",
                  "semantic": "semantic/image_raw"}[stream]
        return f"{camera.rstrip('/')}/{suffix}"


FIELDS = {f.name: f for f in dataclasses.fields(MapperConfig)}
_TYPES = {str: Parameter.Type.STRING, float: Parameter.Type.DOUBLE, int: Parameter.Type.INTEGER,
          bool: Parameter.Type.BOOL, list: Parameter.Type.STRING_ARRAY}


_DEFAULTS = MapperConfig()


def _kind(name: str) -> type:
    return type(getattr(_DEFAULTS, name))


def descriptor(name: str) -> ParameterDescriptor:
    """ParameterDescriptor of one MapperConfig field: description, type, range, read-only flag."""
    meta = FIELDS[name].metadata
    kind = _kind(name)
    desc = ParameterDescriptor(name=name, description=meta["description"],
                               additional_constraints=meta["constraints"], read_only=meta["read_only"])
    if kind is list:
        # rclpy types an empty list as a byte array, so lists are dynamically typed and checked in declare_config.
        desc.dynamic_typing = True
    else:
        desc.type = _TYPES[kind].value
    if meta["range"] is not None:
        lo, hi = meta["range"]
        if kind is float:
            desc.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
        else:
            desc.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=1)]
    return desc


def coerce_value(name: str, value: Any) -> Any:
    """A YAML value for MapperConfig field ``name``: ints become floats for float fields, tuples lists."""
    kind = _kind(name)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is list and isinstance(value, (tuple, array.array)):
        return list(value)
    return value


def to_parameter(name: str, value: Any) -> Parameter:
    """An rclpy Parameter override of a node parameter from a YAML value (ints accepted for float parameters)."""
    return Parameter(name, value=coerce_value(name, value) if name in FIELDS else value)


def declare_config(node: Node) -> MapperConfig:
    """Declare every MapperConfig field on ``node`` and return the validated values.

    Raises ParameterError with the parameter name for wrong types, out-of-range or inconsistent values.
    """
    values = {}
    for name in FIELDS:
        default = getattr(_DEFAULTS, name)
        try:
            value = node.declare_parameter(name, default, descriptor(name)).value
        except ParameterException as exc:
            raise ParameterError(f"{node.get_name()}: parameter {name!r}: {exc}") from None
        if isinstance(default, list):
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ParameterError(f"{node.get_name()}: parameter {name!r} must be a list of strings, got "
                                     f"{value!r}")
            value = list(value)
        values[name] = value
    try:
        return MapperConfig(**values).validate()
    except ParameterError as exc:
        raise ParameterError(f"{node.get_name()}: invalid parameter {exc}") from None


def on_set_parameters(current: MapperConfig, params: list[Parameter],
                      ) -> tuple[MapperConfig | None, SetParametersResult]:
    """Validate a live parameter change; returns (the new config or None, the result for rclpy)."""
    changes = {p.name: coerce_value(p.name, p.value) for p in params if p.name in FIELDS}
    try:
        new = dataclasses.replace(current, **changes).validate()
    except (ParameterError, TypeError) as exc:
        return None, SetParametersResult(successful=False, reason=str(exc))
    return new, SetParametersResult(successful=True)


def render_default_yaml() -> str:
    """config/default.yaml: every parameter with its default and a comment (description, range)."""
    lines = ["# Parameters of the ov3dseg mapping node, generated from ov3dseg_ros.params.MapperConfig",
             "# (python -c 'from ov3dseg_ros.params import render_default_yaml as r; print(r(), end=\"\")').",
             "# Units: metres, seconds, hertz. Read-only parameters are fixed at start-up.",
             f"{NODE_NAME}:", "  ros__parameters:"]
    for name, f in FIELDS.items():
        meta = f.metadata
        notes = []
        if meta["range"] is not None:
            notes.append(f"range [{meta['range'][0]}, {meta['range'][1]}]")
        if meta["constraints"]:
            notes.append(meta["constraints"])
        if not meta["read_only"]:
            notes.append("changeable at run time")
        comment = meta["description"] + (f" ({'; '.join(notes)})" if notes else "")
        lines.append(f"    # {comment}")
        default = getattr(_DEFAULTS, name)
        # rcl's YAML parser cannot type an empty list: leave such parameters unset (= their empty default).
        lines.append(f"    # {name}: []" if default == [] else f"    {name}: {_yaml_scalar(default)}")
    return "\n".join(lines) + "\n"


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_scalar(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)
