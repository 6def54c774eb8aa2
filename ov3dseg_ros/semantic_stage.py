"""The model stage of the mapping node: an open-vocabulary model over the local map window, off the geometry path.

The model is an ``ov3dseg_core.models.semantic_stage.SemanticStage`` (``load_semantic_stage``): the 3D kind (the
default, SAS, GeoGuide, Mosaic3D checkpoints) or the 2D+3D kind (XMask3D checkpoints). The worker calls this stage
after integrating each RGB-D frame. Every posed frame is offered to the model as a key-frame candidate (a pose
comparison and a reference kept; the 3D kind ignores it). A frame whose source time is at least 1 / model_rate_hz
after the previous pass (source time keeps bag replays deterministic) hands its window (the camera position) to
the stage's own thread through a one-slot hand-off: the newest window wins, an older one still waiting is
superseded (counted). The thread runs the model over the voxels within model_window_radius of that position (the
2D branch on the key frames waiting, if any) and fuses the features into the map's float16 feature layer, so
integration never waits for the model. ``synchronous`` runs passes in the caller instead (a deterministic replay).
"""
from __future__ import annotations

import threading
from typing import Callable

import numpy as np
import torch

from ov3dseg_core.data.frames import RGBDFrame
from ov3dseg_core.mapping.voxel_map import VoxelMap
from ov3dseg_core.models.semantic_stage import SemanticStage as ModelStage


class SemanticStage:
    """Frame stage ``stage(frame, voxel_map)`` running ``model``; counts its passes, the voxels they covered, the
    model's branch runs (``branch_passes``: {"2d": key frames used, "3d": 3D-branch runs}) and superseded windows.

    ``on_error(exc)`` is called (in the stage's thread) when a pass raises; the stage goes on with the next one.
    ``on_pass()`` is called (in the stage's thread) after each pass that changed the map's features.
    ``threads``: torch intra-op threads of the stage's thread.
    """

    def __init__(self, model: ModelStage, rate_hz: float, radius: float, *, synchronous: bool = False,
                 on_error: Callable[[Exception], None] | None = None,
                 on_pass: Callable[[], None] | None = None, threads: int = 1):
        self.model = model
        self.period_ns = int(1e9 / rate_hz) if rate_hz > 0 else 0
        self.radius = radius
        self.synchronous = synchronous
        self.last_stamp_ns: int | None = None
        self.passes = 0
        self.voxels = 0
        self.superseded = 0
        self.branch_passes = {"2d": 0, "3d": 0}
        self._on_error = on_error
        self._on_pass = on_pass
        self._threads = threads
        self._pending: tuple[np.ndarray, VoxelMap] | None = None
        self._running = False
        self._closed = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="ov3dseg_model", daemon=True)
        self._thread.start()

    def __call__(self, frame: RGBDFrame, voxel_map: VoxelMap) -> None:
        self.model.offer_frame(frame)
        if self.last_stamp_ns is not None and 0 <= frame.stamp_ns - self.last_stamp_ns < self.period_ns:
            return
        self.last_stamp_ns = frame.stamp_ns
        center = np.array(frame.pose[:3, 3], dtype=np.float64)
        if self.synchronous:
            self._update(center, voxel_map)
            return
        with self._changed:
            self.superseded += self._pending is not None
            self._pending = (center, voxel_map)
            self._changed.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no window is waiting or running (True), or ``timeout_s`` passed (False)."""
        with self._changed:
            return self._changed.wait_for(lambda: self._pending is None and not self._running, timeout=timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the thread after the pass in progress (a waiting window is dropped)."""
        with self._changed:
            self._closed = True
            self._pending = None
            self._changed.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        torch.set_num_threads(self._threads)  # intra-op threads of this thread's model passes
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._pending is not None or self._closed)
                if self._closed:
                    return
                (center, voxel_map), self._pending = self._pending, None
                self._running = True
            try:
                self._update(center, voxel_map)
            finally:
                with self._changed:
                    self._running = False
                    self._changed.notify_all()

    def _update(self, center: np.ndarray, voxel_map: VoxelMap) -> None:
        """One model pass over the window around ``center`` (3,) metres, map frame; errors go to on_error."""
        try:
            result = self.model.update(voxel_map, center=center, radius=self.radius)
        except Exception as exc:
            if self._on_error is None:
                raise
            self._on_error(exc)
            return
        self.passes += 1
        self.voxels += result.num_voxels
        for branch, runs in result.passes.items():
            self.branch_passes[branch] += runs
        if self._on_pass is not None and result.num_voxels:
            self._on_pass()
