"""Per-input diagnostics (rate and timestamp delay, as diagnostic_updater's FrequencyStatus / TimeStampStatus):
the levels from their thresholds, and live on /diagnostics through real DDS with the thresholds as parameters."""
from __future__ import annotations

import time

from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.parameter import Parameter

from ov3dseg_ros.input_diagnostics import InputLimits, InputMonitor
from ros_rig import start_graph, wait_until, wall_images

S = 1_000_000_000
LIMITS = InputLimits(min_rate_hz=10.0, max_rate_hz=30.0, rate_tolerance=0.1, window_s=1.0, delay_warn_s=0.5,
                     delay_error_s=2.0)


def monitored(rate_hz: float, delay_s: float, seconds: float = 1.0) -> DiagnosticStatus:
    """Status after ``seconds`` of messages at ``rate_hz`` whose stamps are ``delay_s`` old at receipt."""
    monitor = InputMonitor("/camera/color/image_raw")
    now_ns = 100 * S
    for i in range(int(rate_hz * seconds)):
        now_ns = 100 * S + int(i * S / rate_hz)
        monitor.tick(now_ns - int(delay_s * 1e9), now_ns)
    return monitor.status(now_ns + int(S / rate_hz), LIMITS, "mapper: input /camera/color/image_raw", "mapper")


def test_levels_follow_the_thresholds():
    ok = monitored(20.0, 0.05)
    values = {kv.key: kv.value for kv in ok.values}
    assert (ok.level, ok.message) == (DiagnosticStatus.OK, "ok") and values["rate Hz"] == "20.00"
    assert values["delay max s"] == "0.050" and values["topic"] == "/camera/color/image_raw"
    assert monitored(9.5, 0.05).level == DiagnosticStatus.OK  # within the 10 % tolerance
    slow = monitored(5.0, 0.05)
    assert slow.level == DiagnosticStatus.WARN and "rate too low" in slow.message
    assert "rate too high" in monitored(50.0, 0.05).message
    late, stale = monitored(20.0, 1.0), monitored(20.0, 3.0)
    assert (late.level, stale.level) == (DiagnosticStatus.WARN, DiagnosticStatus.ERROR)
    assert "late" in late.message and "too far in the past" in stale.message
    future = monitored(20.0, -1.0)
    assert future.level == DiagnosticStatus.WARN and "future" in future.message
    both = monitored(5.0, 3.0)
    assert both.level == DiagnosticStatus.ERROR and "rate too low" in both.message and "past" in both.message
    silent = InputMonitor("/lidar/points").status(5 * S, LIMITS, "mapper: input /lidar/points", "mapper")
    assert silent.level == DiagnosticStatus.ERROR and silent.message == "no messages for 1 s"


def test_inputs_on_diagnostics_with_thresholds_as_parameters(ros_context):
    graph, rig = start_graph(ros_context, {"lidar_topics": ["/lidar/points"], "diag_window_s": 1.0,
                                           "diag_min_rate_hz": 2.0, "diag_delay_warn_s": 0.5,
                                           "diag_delay_error_s": 3.0})
    try:
        rig.wait_connected()
        rig.publish_static_tf()
        color, depth, _ = wall_images()

        def stream(delay_s: float, seconds: float = 1.2) -> dict[str, DiagnosticStatus]:
            """Publish frames at 10 Hz stamped ``delay_s`` ago; then the newest input statuses by topic.

            The minimum rate (2 Hz) leaves room for a loaded CI machine; publishing keeps a fixed schedule so that
            slow publish calls do not lower the rate."""
            start = time.monotonic()
            for i in range(int(seconds * 10)):
                rig.publish_frame(rig.get_clock().now().nanoseconds - int(delay_s * 1e9), color, depth)
                time.sleep(max(0.0, start + (i + 1) * 0.1 - time.monotonic()))
            stamp = rig.get_clock().now().nanoseconds
            wait_until(lambda: rig.diagnostics is not None and
                       rig.diagnostics.header.stamp.sec * S + rig.diagnostics.header.stamp.nanosec > stamp,
                       what="fresh diagnostics")
            prefix = f"{graph.mapper.get_name()}: input "
            return {s.name[len(prefix):]: s for s in rig.diagnostics.status if s.name.startswith(prefix)}

        inputs = stream(0.0)
        assert set(inputs) == {"/camera/color/image_raw", "/camera/depth/image_raw", "/camera/color/camera_info",
                               "/lidar/points"}
        for topic in ("/camera/color/image_raw", "/camera/depth/image_raw", "/camera/color/camera_info"):
            assert inputs[topic].level == DiagnosticStatus.OK, (topic, inputs[topic].message)
        assert inputs["/lidar/points"].level == DiagnosticStatus.ERROR
        assert "no messages" in inputs["/lidar/points"].message

        late = stream(1.0)["/camera/depth/image_raw"]
        assert late.level == DiagnosticStatus.WARN and "late" in late.message
        assert graph.mapper.set_parameters([Parameter("diag_delay_error_s", value=0.8)])[0].successful
        stale = stream(1.0)["/camera/depth/image_raw"]
        assert stale.level == DiagnosticStatus.ERROR and "too far in the past" in stale.message
        rejected = graph.mapper.set_parameters([Parameter("diag_delay_warn_s", value=2.0)])[0]
        assert not rejected.successful and "diag_delay_warn_s" in rejected.reason
    finally:
        graph.shutdown()
