"""ROS 2 test set-up: real rclpy and FastDDS, localhost only, one context and ROS domain per test module."""
from __future__ import annotations

import os
import zlib

import pytest

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"  # read when a context starts: set before any init

rclpy = pytest.importorskip("rclpy", reason="the ROS 2 tests need rclpy (scripts/setup.sh installs it)")
pytest.importorskip("ov3dseg_ros.srv", reason="the ov3dseg_ros interfaces are not built (run scripts/setup.sh)")

_used_domains: set[int] = set()


def _domain_for(module_name: str) -> int:
    """A ROS domain id in 101..200 derived from the module and the process, unique within this process."""
    domain = (zlib.crc32(module_name.encode()) + os.getpid()) % 100 + 101
    while domain in _used_domains:
        domain = domain % 100 + 101
    _used_domains.add(domain)
    return domain


@pytest.fixture(scope="module")
def ros_domain(request) -> int:
    """This module's ROS_DOMAIN_ID (also exported, for code that reads the environment)."""
    domain = _domain_for(request.module.__name__)
    previous = os.environ.get("ROS_DOMAIN_ID")
    os.environ["ROS_DOMAIN_ID"] = str(domain)
    yield domain
    if previous is None:
        os.environ.pop("ROS_DOMAIN_ID", None)
    else:
        os.environ["ROS_DOMAIN_ID"] = previous


@pytest.fixture(scope="module")
def ros_context(ros_domain):
    """An initialised rclpy context on this module's domain, shut down after the module."""
    context = rclpy.context.Context()
    rclpy.init(context=context, domain_id=ros_domain)
    yield context
    rclpy.try_shutdown(context=context)
