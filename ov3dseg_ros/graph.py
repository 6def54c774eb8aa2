"""The node graph of launch/mapping.launch.py, started in one process (the launch package is not on PyPI).

Parameters come from standard ROS 2 parameter files: ``/**:`` sections apply to every node, ``<node name>:``
sections to that node (later files and sections override earlier ones), then explicit overrides on top.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rclpy.context import Context
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

from ov3dseg_ros.mapping_node import MappingNode
from ov3dseg_ros.params import FIELDS, NODE_NAME, ParameterError, to_parameter

DEFAULT_PARAMS = Path(__file__).resolve().parent.parent / "config" / "default.yaml"
"""config/default.yaml of the source checkout (pip route)."""


@dataclass(frozen=True)
class NodeSpec:
    """One node of the graph, as launch_ros.actions.Node names it."""

    package: str
    executable: str
    name: str


ROS_NODE_PARAMETERS = ("use_sim_time", "start_type_description_service")
"""Parameters every rclpy node declares itself."""

NODES = (NodeSpec("ov3dseg_ros", "mapping_node", NODE_NAME),)
"""The nodes of launch/mapping.launch.py (a test keeps the two in step)."""


def load_params_file(path: str | Path, node_name: str) -> dict[str, Any]:
    """Parameters for ``node_name`` from a ROS 2 parameter YAML (``/**`` wildcard, then the node's own section).

    ParameterError for a file that is not a mapping of ``<node>: {ros__parameters: {...}}``.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ParameterError(f"cannot read parameter file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ParameterError(f"{path}: expected '<node name>: {{ros__parameters: ...}}' sections at the top level")
    params: dict[str, Any] = {}
    for key in ("/**", node_name, f"/{node_name}"):
        section = data.get(key)
        if section is None:
            continue
        if not isinstance(section, dict) or not isinstance(section.get("ros__parameters", {}), dict):
            raise ParameterError(f"{path}: section {key!r} must hold a 'ros__parameters' mapping")
        values = _flatten(section.get("ros__parameters") or {})
        if key != "/**":  # wildcard sections may carry parameters of other nodes
            check_known(values, f"{path} section {key!r}")
        params.update(values)
    return params


def check_known(params: dict[str, Any], where: str) -> None:
    """ParameterError for names that are neither MapperConfig fields nor ROS's own node parameters (typos)."""
    unknown = sorted(n for n in params if n not in FIELDS and n not in ROS_NODE_PARAMETERS
                     and not n.startswith("qos_overrides."))
    if unknown:
        raise ParameterError(f"{where}: unknown parameters {unknown} of {NODE_NAME} (known: {sorted(FIELDS)})")


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested YAML mappings -> dotted ROS parameter names."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def default_params_files() -> list[Path]:
    """config/default.yaml of the checkout, else of the installed package share directory (colcon), else none."""
    if DEFAULT_PARAMS.exists():
        return [DEFAULT_PARAMS]
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:
        return []
    try:
        shared = Path(get_package_share_directory("ov3dseg_ros")) / "config" / "default.yaml"
    except PackageNotFoundError:
        return []
    return [shared] if shared.exists() else []


def resolve_params(params_files: list[str | Path] | None = None, params: dict[str, Any] | None = None,
                   ) -> dict[str, Any]:
    """Mapping-node parameters from the files (default: ``default_params_files()``), then ``params``."""
    if params_files is None:
        params_files = default_params_files()
    values: dict[str, Any] = {}
    for path in params_files:
        values.update(load_params_file(path, NODE_NAME))
    check_known(params or {}, "parameters")
    values.update(params or {})
    return values


class NodeGraph:
    """The ov3dseg nodes in this process: the mapping node on its own executors (one single-threaded executor per
    callback group, ``MappingNode.spinner()``), further nodes added to ``executor`` (single-threaded), all
    spinning in background threads.

    ``params_files``: ROS 2 parameter YAMLs (default: ``default_params_files()``); ``params``: overrides
    for the mapping node on top; ``remappings``: {from: to} topic remappings of the mapping node.
    Use as a context manager, or call ``start()`` and ``shutdown()``. Raises ParameterError for bad parameters.
    """

    def __init__(self, params_files: list[str | Path] | None = None, params: dict[str, Any] | None = None,
                 remappings: dict[str, str] | None = None, context: Context | None = None):
        overrides = [to_parameter(name, value) for name, value in resolve_params(params_files, params).items()]
        cli_args = ["--ros-args"] + [arg for src, dst in (remappings or {}).items() for arg in ("-r", f"{src}:={dst}")]
        self.mapper = MappingNode(context=context, parameter_overrides=overrides, cli_args=cli_args)
        self.nodes = [self.mapper]
        self.spinner = self.mapper.spinner()
        self.executor = SingleThreadedExecutor(context=context)
        """Spins the graph's other nodes (tools and tests add theirs)."""
        self._thread: threading.Thread | None = None

    def start(self) -> "NodeGraph":
        self.spinner.start()
        self._thread = threading.Thread(target=self._spin, name="ov3dseg_executor", daemon=True)
        self._thread.start()
        return self

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except ExternalShutdownException:
            pass

    def spin(self) -> None:
        """Spin in the calling thread until shutdown or Ctrl-C."""
        self.spinner.start()
        try:
            self.executor.spin()
        except (KeyboardInterrupt, ExternalShutdownException):
            pass

    def shutdown(self) -> None:
        self.spinner.shutdown()
        self.executor.shutdown(timeout_sec=5.0)
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        for node in self.nodes:
            node.destroy_node()

    def __enter__(self) -> "NodeGraph":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()
