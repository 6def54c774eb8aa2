"""The launch files: generate_launch_description() with the real ROS 2 `launch`/`launch_ros` packages where they are
installed, else against minimal stand-ins that record what the files build (pip installs have no launch package).
"""
from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest
import yaml

from ov3dseg_ros.conversions import SEMANTIC_CLOUD_DTYPE
from ov3dseg_ros.graph import NODES, load_params_file
from ov3dseg_ros.params import NODE_NAME, MapperConfig

ROOT = Path(__file__).resolve().parents[2]
"""The source tree has the layout of the installed share directory (config/, launch/, rviz/)."""
OUTPUTS = ("/ov3dseg/semantic_cloud", "/ov3dseg/query_markers")
"""The node's map outputs in the root namespace."""


def real_launch_installed() -> bool:
    try:
        import launch
        import launch_ros.actions  # noqa: F401
    except ImportError:
        return False
    return hasattr(launch, "LaunchDescription")  # not the repository's own launch/ folder as a namespace package


REAL = real_launch_installed()


class Recorded:
    """A stand-in launch entity: keeps its constructor's arguments."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def standin_modules() -> dict[str, types.ModuleType]:
    """launch, launch.actions, ..., launch_ros.actions with Recorded classes of the names the launch files use."""
    names = {"launch": ["LaunchDescription"],
             "launch.actions": ["DeclareLaunchArgument", "OpaqueFunction", "ExecuteProcess",
                                "IncludeLaunchDescription"],
             "launch.conditions": ["IfCondition", "UnlessCondition"],
             "launch.launch_description_sources": ["PythonLaunchDescriptionSource"],
             "launch.substitutions": ["LaunchConfiguration"],
             "launch_ros": [], "launch_ros.actions": ["Node"]}
    modules = {}
    for module_name, classes in names.items():
        module = types.ModuleType(module_name)
        for cls in classes:
            setattr(module, cls, type(cls, (Recorded,), {}))
        modules[module_name] = module
    return modules


@pytest.fixture
def load_launch(monkeypatch):
    """Import a launch file of launch/ as a module (with stand-ins unless the real packages are installed)."""
    if not REAL:
        for name, module in standin_modules().items():
            monkeypatch.setitem(sys.modules, name, module)
        monkeypatch.setattr("ament_index_python.packages.get_package_share_directory", lambda package: str(ROOT))

    def load(name: str) -> types.ModuleType:
        spec = importlib.util.spec_from_file_location(name.replace(".", "_"), ROOT / "launch" / name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load


def entities(description) -> list:
    return list(description.entities) if REAL else description.args[0]


def declared(description) -> dict[str, tuple[str | None, str]]:
    """{argument: (default or None, description)} of the DeclareLaunchArgument actions."""
    if REAL:
        from launch import LaunchContext
        from launch.actions import DeclareLaunchArgument
        from launch.utilities import perform_substitutions
        return {e.name: (None if e.default_value is None else perform_substitutions(LaunchContext(), e.default_value),
                         e.description) for e in entities(description) if isinstance(e, DeclareLaunchArgument)}
    return {e.args[0] if e.args else e.kwargs["name"]: (e.kwargs.get("default_value"), e.kwargs["description"])
            for e in entities(description) if type(e).__name__ == "DeclareLaunchArgument"}


def launched_nodes(description, values: dict[str, str]) -> list[tuple[str, str, dict | None]]:
    """(package, executable, Node kwargs where the stand-ins recorded them) of the nodes the opaque function starts."""
    if REAL:
        from launch import LaunchContext
        from launch.actions import OpaqueFunction
        context = LaunchContext()
        context.launch_configurations.update(values)
        function = next(e for e in entities(description) if isinstance(e, OpaqueFunction))
        return [(n.node_package, n.node_executable, None) for n in function.execute(context)]
    function = next(e for e in entities(description) if type(e).__name__ == "OpaqueFunction")
    context = types.SimpleNamespace(launch_configurations=values)
    nodes = function.kwargs["function"](context, *function.kwargs.get("args", []))
    return [(n.kwargs["package"], n.kwargs["executable"], n.kwargs) for n in nodes]


def test_mapping_launch_arguments_node_remappings_and_parameter_files(load_launch):
    module = load_launch("mapping.launch.py")
    description = module.generate_launch_description()
    arguments = declared(description)
    assert set(arguments) == {"namespace", "params_file", "use_sim_time", "camera", "lidar_topic", "model", "device",
                              "log_level", "rviz"}
    assert all(text for _, text in arguments.values())
    defaults = {name: default for name, (default, _) in arguments.items()}
    assert (defaults["use_sim_time"], defaults["rviz"], defaults["model"], defaults["camera"]) == \
        ("false", "false", "", "/camera")
    share = Path(defaults["params_file"]).parents[1]
    if not REAL:
        assert defaults["params_file"] == str(ROOT / "config" / "default.yaml")
    assert load_params_file(defaults["params_file"], NODE_NAME)["voxel_size"] == MapperConfig().voxel_size

    # Defaults: the mapping node alone, the parameter file then use_sim_time, identity remappings of every input.
    nodes = launched_nodes(description, defaults)
    assert [(package, executable) for package, executable, _ in nodes] == [(n.package, n.executable) for n in NODES]
    kwargs = module.node_arguments(defaults)
    assert (kwargs["name"], kwargs["namespace"]) == (NODE_NAME, "")
    assert kwargs["parameters"] == [defaults["params_file"], {"use_sim_time": False}]
    assert kwargs["ros_arguments"] == ["--log-level", "info"]
    cfg = MapperConfig(label_names=["a"])
    inputs = {cfg.topic(ns, s) for ns in cfg.cameras for s in ("color", "depth", "camera_info", "semantic")}
    assert dict(kwargs["remappings"]) == {topic: topic for topic in inputs | set(cfg.lidar_topics)}
    if not REAL:
        assert nodes[0][2] == kwargs

    # Every argument set: remapped camera prefix and LiDAR, model/device over the file, RViz with our view.
    values = {**defaults, "namespace": "robot1", "use_sim_time": "true", "camera": "/front/", "log_level": "debug",
              "lidar_topic": "/velodyne_points", "model": "default", "device": "cuda", "rviz": "true"}
    nodes = launched_nodes(description, values)
    assert [(package, executable) for package, executable, _ in nodes] == \
        [("ov3dseg_ros", "mapping_node"), ("rviz2", "rviz2")]
    kwargs = module.node_arguments(values)
    assert kwargs["namespace"] == "robot1" and kwargs["ros_arguments"] == ["--log-level", "debug"]
    assert kwargs["parameters"] == [defaults["params_file"], {"use_sim_time": True, "model": "default",
                                                              "device": "cuda"}]
    remapped = dict(kwargs["remappings"])
    assert remapped["/camera/depth/image_raw"] == "/front/depth/image_raw"
    assert remapped["/camera/color/camera_info"] == "/front/color/camera_info"
    assert remapped["/lidar/points"] == "/velodyne_points"
    rviz = module.rviz_arguments(values, str(share))
    assert rviz["arguments"][0] == "-d" and rviz["parameters"] == [{"use_sim_time": True}]
    if not REAL:
        assert nodes[1][2] == rviz and Path(rviz["arguments"][1]) == ROOT / "rviz" / "ov3dseg.rviz"
        assert (ROOT / "rviz" / "ov3dseg.rviz").exists()
    with pytest.raises(ValueError, match="true or false"):
        module.node_arguments({**defaults, "use_sim_time": "yes"})


def test_replay_launch_plays_the_bag_with_clock_into_the_mapping_launch(load_launch):
    description = load_launch("replay.launch.py").generate_launch_description()
    arguments = declared(description)
    assert set(arguments) == {"bag", "rate", "loop"} and arguments["bag"][0] is None
    kinds = [type(e).__name__ for e in entities(description)]
    assert kinds.count("IncludeLaunchDescription") == 1 and kinds.count("ExecuteProcess") == 2
    if REAL:
        return
    include = next(e for e in entities(description) if type(e).__name__ == "IncludeLaunchDescription")
    assert Path(include.args[0].args[0]) == ROOT / "launch" / "mapping.launch.py"
    assert dict(include.kwargs["launch_arguments"]) == {"use_sim_time": "true"}
    plays = [e for e in entities(description) if type(e).__name__ == "ExecuteProcess"]
    for play in plays:
        cmd = play.kwargs["cmd"]
        assert cmd[:3] == ["ros2", "bag", "play"] and cmd[3].args == ("bag",) and "--clock" in cmd
        condition = play.kwargs["condition"]
        assert condition.args[0].args == ("loop",)
    assert {type(p.kwargs["condition"]).__name__: "--loop" in p.kwargs["cmd"] for p in plays} == \
        {"IfCondition": True, "UnlessCondition": False}


@pytest.mark.skipif(not REAL, reason="ROS 2 `launch`/`launch_ros` are not installed (pip route): the tests above "
                    "ran the launch files against stand-ins")
def test_the_real_launch_package_ran_the_launch_files():
    """On a full ROS 2 install the tests above used the real packages; this line says so in the report."""
    import launch
    assert hasattr(launch, "LaunchDescription")


def test_rviz_and_foxglove_views_show_the_node_outputs_in_the_map_frame():
    rviz = yaml.safe_load((ROOT / "rviz" / "ov3dseg.rviz").read_text())["Visualization Manager"]
    assert rviz["Global Options"]["Fixed Frame"] == MapperConfig().map_frame
    displays = {d["Name"]: d for d in rviz["Displays"]}
    assert displays["TF"]["Class"] == "rviz_default_plugins/TF"
    by_label, by_rgb = displays["Semantic cloud (label)"], displays["Semantic cloud (rgb)"]
    assert (by_label["Color Transformer"], by_label["Channel Name"], by_rgb["Color Transformer"]) == \
        ("Intensity", "label", "RGB8")
    for display in (by_label, by_rgb, displays["Query markers"]):
        assert display["Topic"]["Durability Policy"] == "Transient Local"  # the node's latched outputs
    assert {by_label["Topic"]["Value"], displays["Query markers"]["Topic"]["Value"]} == set(OUTPUTS)
    assert {"label", "rgb"} <= set(SEMANTIC_CLOUD_DTYPE.names)

    layout = json.loads((ROOT / "foxglove" / "ov3dseg.json").read_text())
    panels = layout["configById"]
    scene = panels["3D!ov3dseg"]
    assert scene["followTf"] == "map" and set(scene["topics"]) == set(OUTPUTS)
    assert scene["topics"]["/ov3dseg/semantic_cloud"]["colorField"] == "label"
    assert panels["CallService!query"]["serviceName"] == "/query"
    assert json.loads(panels["CallService!query"]["requestPayload"])["text"]
    assert "launch config rviz foxglove DESTINATION share" in (ROOT / "CMakeLists.txt").read_text()
