"""Room layouts: a furnished rectangular room with floor, walls, ceiling, doors and windows.

The room frame is the map frame: x in [0, W], y in [0, D], z in [0, H] metres, z up. Walls are numbered
counter-clockwise: 0 at y = 0, 1 at x = W, 2 at y = D, 3 at x = 0. Objects stand against walls (their back to the
wall) or in free space, never intersecting one another (axis-aligned boxes with a margin) and always inside the
room. The room type decides what appears; everything is drawn from one ``numpy.random.Generator``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ov3dseg_core.labels import IGNORE_LABEL
from ov3dseg_core.sim import furniture as fb
from ov3dseg_core.sim.furniture import LABEL, Furniture
from ov3dseg_core.sim.shapes import TriMesh, box, concatenate, quad

ROOM_TYPES = ("bedroom", "office", "kitchen", "bathroom", "living_room")

ROOM_CATEGORIES: dict[str, tuple[str, ...]] = {
    "bedroom": ("wall", "floor", "door", "window", "bed", "cabinet", "curtain"),
    "office": ("wall", "floor", "door", "window", "desk", "chair", "bookshelf"),
    "kitchen": ("wall", "floor", "door", "counter", "cabinet", "sink", "refrigerator"),
    "bathroom": ("wall", "floor", "door", "toilet", "sink", "bathtub", "shower curtain"),
    "living_room": ("wall", "floor", "door", "window", "sofa", "table", "chair", "curtain", "picture"),
}
"""ScanNet-20 categories every room of a type contains (others appear at random)."""

_ROOM_SIZES = {  # width, depth ranges in metres
    "bedroom": ((3.2, 5.0), (3.2, 5.0)),
    "office": ((3.0, 5.0), (3.0, 4.5)),
    "kitchen": ((3.0, 5.0), (3.0, 4.5)),
    "bathroom": ((2.3, 3.2), (2.2, 3.0)),
    "living_room": ((4.0, 7.0), (4.0, 6.0)),
}
OBJECT_MARGIN = 0.03
"""Minimum gap in metres between the boxes of two objects (and between an object and a wall it does not touch)."""
FLOOR_INSTANCE, CEILING_INSTANCE, FIRST_WALL_INSTANCE = 1, 2, 3
_WINDOWS = {"bedroom": (1, 2), "office": (1, 2), "living_room": (1, 2), "kitchen": (0, 1), "bathroom": (0, 1)}
"""Least and most windows per room type."""
MIN_FREE_RADIUS = 0.5
"""A layout keeps a spot at least this far (metres, horizontally) from every object and wall for the sensors."""


def aabb_overlaps(lo: np.ndarray, hi: np.ndarray, others_lo: np.ndarray, others_hi: np.ndarray,
                  margin: float = 0.0) -> np.ndarray:
    """Whether box [lo, hi] (3,) comes closer than ``margin`` to each of the boxes (M, 3): (M,) bool."""
    others_lo, others_hi = np.asarray(others_lo).reshape(-1, 3), np.asarray(others_hi).reshape(-1, 3)
    return np.all((lo < others_hi + margin) & (others_lo < hi + margin), axis=1)


def box_distance(points: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Euclidean distance (N, M) from points (N, D) to axis-aligned boxes (M, D) (0 inside); any D."""
    points = np.asarray(points, np.float64)[:, None, :]
    gap = np.maximum(np.maximum(np.asarray(lo)[None] - points, points - np.asarray(hi)[None]), 0.0)
    return np.linalg.norm(gap, axis=2)


@dataclass
class Opening:
    """A door or window hole in wall ``wall``: centre along the wall (m from its start), width, bottom, height."""

    kind: str
    wall: int
    center: float
    width: float
    bottom: float
    height: float


@dataclass(repr=False)
class PlacedObject:
    """An object in the room: world-frame mesh (final instance ids), its box, where it stands.

    kind: builder name; label: main class id; instances: instance ids of its sub-objects; T_world_object (4, 4);
    aabb_min / aabb_max (3,) metres; wall: wall index it stands against (or None); along: its centre along that
    wall; in_wall: doors and windows (their boxes reach into the wall); required: part of the room type's program.
    """

    kind: str
    label: int
    instances: tuple[int, ...]
    mesh: TriMesh
    part_names: list[str]
    T_world_object: np.ndarray
    aabb_min: np.ndarray
    aabb_max: np.ndarray
    wall: int | None = None
    along: float = 0.0
    in_wall: bool = False
    required: bool = False


@dataclass
class Room:
    """A furnished room. size: (3,) float64 (W, D, H) metres; structure: floor, ceiling and walls (with holes)."""

    room_type: str
    size: np.ndarray
    structure: TriMesh
    openings: list[Opening]
    objects: list[PlacedObject] = field(default_factory=list)

    def mesh(self) -> TriMesh:
        """Everything as one world-frame TriMesh."""
        return concatenate([self.structure] + [o.mesh for o in self.objects])

    def object_boxes(self) -> tuple[np.ndarray, np.ndarray]:
        """(lo (M, 3), hi (M, 3)) boxes of all objects, doors and windows included."""
        if not self.objects:
            return np.zeros((0, 3)), np.zeros((0, 3))
        return np.stack([o.aabb_min for o in self.objects]), np.stack([o.aabb_max for o in self.objects])

    def horizontal_clearance(self, xy: np.ndarray) -> np.ndarray:
        """(N,) metres from each (N, 2) position to the nearest wall or object footprint (0 inside one)."""
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        lo, hi = self.object_boxes()
        walls = np.minimum.reduce([xy[:, 0], self.size[0] - xy[:, 0], xy[:, 1], self.size[1] - xy[:, 1]])
        if len(lo) == 0:
            return np.maximum(walls, 0.0)
        return np.maximum(np.minimum(walls, box_distance(xy, lo[:, :2], hi[:, :2]).min(axis=1)), 0.0)

    def clearance_grid(self, resolution: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
        """Horizontal clearance sampled on a grid of cell centres: (xy (nx, ny, 2), clearance (nx, ny)) metres."""
        xs = np.arange(resolution / 2, self.size[0], resolution)
        ys = np.arange(resolution / 2, self.size[1], resolution)
        xy = np.stack(np.meshgrid(xs, ys, indexing="ij"), axis=-1)
        return xy, self.horizontal_clearance(xy.reshape(-1, 2)).reshape(xy.shape[:2])


def wall_frame(size: np.ndarray, wall: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(start (3,), along-wall unit u (3,), inward normal n (3,), length) of ``wall``; u x n = +z."""
    w, d = size[0], size[1]
    start, u = {0: ((0, 0), (1, 0)), 1: ((w, 0), (0, 1)), 2: ((w, d), (-1, 0)), 3: ((0, d), (0, -1))}[wall]
    u3 = np.array([u[0], u[1], 0.0])
    n3 = np.array([-u[1], u[0], 0.0])
    return np.array([start[0], start[1], 0.0]), u3, n3, float(w if wall in (0, 2) else d)


def wall_transform(size: np.ndarray, wall: int, along: float, offset: float, z: float = 0.0) -> np.ndarray:
    """T_world_local (4, 4) for a frame with x along ``wall``, y into the room, z up, at ``along`` metres from the
    wall start and ``offset`` metres from the wall plane, height ``z``."""
    start, u, n, _ = wall_frame(size, wall)
    T = np.eye(4)
    T[:3, :3] = np.column_stack([u, n, [0.0, 0.0, 1.0]])
    T[:3, 3] = start + along * u + offset * n + np.array([0.0, 0.0, z])
    return T


def _structure(rng: np.random.Generator, size: np.ndarray, openings: list[Opening]) -> TriMesh:
    """Floor, ceiling (IGNORE_LABEL) and the four walls, each wall cut around its openings."""
    w, d, h = size
    floor_rgb = fb.color(rng, "wood", "grey", "white")
    wall_rgb = np.clip(fb.color(rng, "white", jitter=0.02) - rng.uniform(0.0, 0.2) * rng.random(3), 0, 1)
    pieces = [quad((0, 0, 0), (w, 0, 0), (0, d, 0)).with_attributes(LABEL["floor"], FLOOR_INSTANCE, 0, floor_rgb),
              quad((0, 0, h), (0, d, 0), (w, 0, 0)).with_attributes(IGNORE_LABEL, CEILING_INSTANCE, 0,
                                                                     fb.color(rng, "white", jitter=0.02))]
    for wall in range(4):
        start, u, _, length = wall_frame(size, wall)
        holes = sorted((o for o in openings if o.wall == wall), key=lambda o: o.center)
        cuts = [0.0] + [x for o in holes for x in (o.center - o.width / 2, o.center + o.width / 2)] + [length]
        spans = []  # (a, b, z0, z1)
        for i in range(len(cuts) - 1):
            a, b = cuts[i], cuts[i + 1]
            if i % 2 == 0:
                spans.append((a, b, 0.0, h))
            else:
                o = holes[i // 2]
                spans += [(a, b, 0.0, o.bottom), (a, b, o.bottom + o.height, h)]
        for a, b, z0, z1 in spans:
            if b - a > 1e-6 and z1 - z0 > 1e-6:
                pieces.append(quad(start + a * u + np.array([0, 0, z0]), (b - a) * u, (0, 0, z1 - z0))
                              .with_attributes(LABEL["wall"], FIRST_WALL_INSTANCE + wall, 0, wall_rgb))
    return concatenate(pieces)


class _Placer:
    """Places objects without overlaps; keeps the keep-out boxes (objects, door swings) of one layout attempt."""

    def __init__(self, rng: np.random.Generator, size: np.ndarray, first_instance: int):
        self.rng = rng
        self.size = size
        self.objects: list[PlacedObject] = []
        self.keep_out: list[tuple[np.ndarray, np.ndarray]] = []
        self.next_instance = first_instance

    def fits(self, lo: np.ndarray, hi: np.ndarray) -> bool:
        if np.any(lo < -1e-9) or np.any(hi > self.size + 1e-9):
            return False
        boxes = [(o.aabb_min, o.aabb_max) for o in self.objects] + self.keep_out
        if not boxes:
            return True
        los, his = (np.stack(b) for b in zip(*boxes))
        return not aabb_overlaps(lo, hi, los, his, OBJECT_MARGIN).any()

    def place(self, furn: Furniture, T: np.ndarray, required: bool = False, wall: int | None = None,
              along: float = 0.0, in_wall: bool = False) -> PlacedObject | None:
        """Add ``furn`` at T_world_object if it fits (in-wall pieces skip the room-bounds test)."""
        mesh = furn.mesh.transformed(T)
        lo, hi = mesh.bounds()
        if not in_wall and not self.fits(lo, hi):
            return None
        subs = np.unique(furn.mesh.instances)
        instances = tuple(int(self.next_instance + s) for s in subs)
        mesh.instances = (self.next_instance + furn.mesh.instances).astype(np.int32)
        self.next_instance += int(subs.max()) + 1
        obj = PlacedObject(furn.kind, furn.label, instances, mesh, furn.part_names, T, lo, hi, wall, along, in_wall,
                           required)
        self.objects.append(obj)
        return obj

    def against_wall(self, furn: Furniture, wall: int | None = None, along: float | None = None,
                     gap: float | None = None, z: float = 0.0, required: bool = False,
                     attempts: int = 25) -> PlacedObject | None:
        """Back against a wall (random wall / position unless given), ``gap`` metres from it, bottom at ``z``."""
        lo, hi = furn.mesh.bounds()
        width, center_x = hi[0] - lo[0], 0.5 * (lo[0] + hi[0])
        for _ in range(attempts if along is None or wall is None else 1):
            k = int(self.rng.integers(4)) if wall is None else wall
            length = wall_frame(self.size, k)[3]
            if width + 2 * OBJECT_MARGIN > length:
                continue
            s = along if along is not None else self.rng.uniform(width / 2 + OBJECT_MARGIN,
                                                                 length - width / 2 - OBJECT_MARGIN)
            g = self.rng.uniform(0.01, 0.04) if gap is None else gap
            T = wall_transform(self.size, k, s, g - lo[1], z) @ _translation(-center_x, 0.0, 0.0)
            obj = self.place(furn, T, required, wall=k, along=s)
            if obj is not None:
                return obj
        return None

    def in_corner(self, furn: Furniture, required: bool = False) -> PlacedObject | None:
        """Against a random wall, pushed into one of its corners."""
        lo, hi = furn.mesh.bounds()
        width = hi[0] - lo[0]
        for _ in range(8):
            k = int(self.rng.integers(4))
            length = wall_frame(self.size, k)[3]
            s = OBJECT_MARGIN + width / 2 if self.rng.random() < 0.5 else length - OBJECT_MARGIN - width / 2
            obj = self.against_wall(furn, wall=k, along=s, gap=OBJECT_MARGIN, required=required)
            if obj is not None:
                return obj
        return None

    def at(self, furn: Furniture, x: float, y: float, yaw: float, required: bool = False) -> PlacedObject | None:
        """Free-standing at (x, y) with heading ``yaw`` (rad; local +y turned by yaw), footprint centre at (x, y)."""
        lo, hi = furn.mesh.bounds()
        c = 0.5 * (lo + hi)
        T = _translation(x, y, 0.0) @ _rotation_z(yaw) @ _translation(-c[0], -c[1], 0.0)
        return self.place(furn, T, required)

    def beside(self, anchor: PlacedObject, furn: Furniture, side: int, required: bool = False) -> PlacedObject | None:
        """On the anchor's wall, just left (side -1) or right (+1) of it."""
        lo, hi = furn.mesh.bounds()
        anchor_width = _width_along_wall(anchor)
        s = anchor.along + side * (anchor_width / 2 + 2 * OBJECT_MARGIN + (hi[0] - lo[0]) / 2)
        return self.against_wall(furn, wall=anchor.wall, along=s, required=required)

    def around(self, anchor: PlacedObject, furn: Furniture, side: float, distance: float, lateral: float = 0.0,
               facing: bool = True, required: bool = False) -> PlacedObject | None:
        """Free-standing ``distance`` metres off one face of the anchor: ``side`` 0 = its front (local +y), pi/2 =
        its left (-x), pi = its back, -pi/2 = its right; shifted ``lateral`` metres along that face; turned to face
        the anchor (or away from it)."""
        a_lo, a_hi = _local_bounds(anchor)
        half = 0.5 * (a_hi - a_lo)
        direction = np.array([-np.sin(side), np.cos(side)])
        reach = abs(direction[0]) * half[0] + abs(direction[1]) * half[1]
        lo, hi = furn.mesh.bounds()
        xy = 0.5 * (a_lo + a_hi)[:2] + direction * (reach + distance + 0.5 * (hi[1] - lo[1]))
        xy = xy + np.array([direction[1], -direction[0]]) * lateral
        x, y = (anchor.T_world_object @ np.array([xy[0], xy[1], 0.0, 1.0]))[:2]
        heading = _yaw(anchor.T_world_object) + side + (np.pi if facing else 0.0)
        return self.at(furn, x, y, heading, required)

    def windows(self) -> list[PlacedObject]:
        return [o for o in self.objects if o.kind == "window"]


def _translation(x: float, y: float, z: float) -> np.ndarray:
    T = np.eye(4)
    T[:3, 3] = (x, y, z)
    return T


def _rotation_z(yaw: float) -> np.ndarray:
    T = np.eye(4)
    c, s = np.cos(yaw), np.sin(yaw)
    T[:2, :2] = [[c, -s], [s, c]]
    return T


def _yaw(T: np.ndarray) -> float:
    return float(np.arctan2(T[1, 0], T[0, 0]))


def _local_bounds(obj: PlacedObject) -> tuple[np.ndarray, np.ndarray]:
    """The object's box in its own frame."""
    T_inv = np.linalg.inv(obj.T_world_object)
    v = obj.mesh.vertices @ T_inv[:3, :3].T + T_inv[:3, 3]
    return v.min(axis=0), v.max(axis=0)


def _width_along_wall(obj: PlacedObject) -> float:
    lo, hi = _local_bounds(obj)
    return float(hi[0] - lo[0])


# ------------------------------------------------------------------------------------------------ openings
def _openings(rng: np.random.Generator, room_type: str, size: np.ndarray) -> list[Opening]:
    """One door, and 0-2 windows depending on the room type, spaced apart on the walls."""
    height = size[2]
    openings = [Opening("door", int(rng.integers(4)), 0.0, rng.uniform(0.8, 0.95), 0.0, rng.uniform(2.0, 2.1))]
    low, high = _WINDOWS[room_type]
    count = int(rng.integers(low, high + 1))
    for _ in range(count):
        if room_type == "bathroom":
            width, h, sill = rng.uniform(0.5, 0.8), rng.uniform(0.5, 0.7), rng.uniform(1.3, 1.5)
        else:
            width, h, sill = rng.uniform(0.8, 1.6), rng.uniform(1.0, 1.5), rng.uniform(0.8, 1.0)
        h = min(h, height - 0.2 - sill)
        openings.append(Opening("window", int(rng.integers(4)), 0.0, width, sill, h))
    placed: list[Opening] = []
    for o in openings:
        length = wall_frame(size, o.wall)[3]
        for _ in range(30):
            c = rng.uniform(o.width / 2 + 0.15, length - o.width / 2 - 0.15)
            if all(p.wall != o.wall or abs(p.center - c) > (p.width + o.width) / 2 + 0.3 for p in placed):
                o.center = c
                placed.append(o)
                break
        else:
            if o.kind == "door":  # the first opening always fits
                raise RuntimeError("no room for the door")
    return placed


def _place_openings(pl: _Placer, openings: list[Opening]) -> None:
    """Door and window objects in their holes, plus a keep-out box where the door swings."""
    for o in openings:
        builder = fb.door if o.kind == "door" else fb.window
        T = wall_transform(pl.size, o.wall, o.center, 0.0, o.bottom)
        pl.place(builder(pl.rng, o.width, o.height), T, required=True, wall=o.wall, along=o.center, in_wall=True)
        if o.kind == "door":
            swing = box((-o.width / 2 - 0.05, 0.0, 0.0), (o.width / 2 + 0.05, o.width + 0.1, o.height))
            pl.keep_out.append(swing.transformed(T).bounds())


# ------------------------------------------------------------------------------------------------ room programs
def _curtains(pl: _Placer, required: bool) -> bool:
    """Curtains at every window; True when each window got one."""
    ok = True
    for win in pl.windows():
        sill, top = win.T_world_object[2, 3], win.aabb_max[2]
        bottom = 0.02 if pl.rng.random() < 0.5 else max(0.02, sill - 0.1)
        length = wall_frame(pl.size, win.wall)[3]
        room_left = 2 * (min(win.along, length - win.along) - OBJECT_MARGIN)
        furn = fb.curtain(pl.rng, _width_along_wall(win) - 0.1, min(top + 0.05, pl.size[2] - 0.1), bottom, room_left)
        sill_depth = float(_local_bounds(win)[1][1])
        ok &= pl.against_wall(furn, wall=win.wall, along=win.along, gap=sill_depth + OBJECT_MARGIN + 0.01,
                              required=required) is not None
    return ok


def _picture(pl: _Placer, above: PlacedObject | None = None, required: bool = False) -> PlacedObject | None:
    furn = fb.picture(pl.rng)
    h = furn.size[2]
    if above is not None:
        z = min(above.aabb_max[2] + pl.rng.uniform(0.15, 0.35), pl.size[2] - h - 0.2)
        obj = pl.against_wall(furn, wall=above.wall, along=above.along, gap=0.0, z=z, required=required)
        if obj is not None:
            return obj
    z = pl.rng.uniform(1.3, 1.7) - h / 2
    return pl.against_wall(furn, gap=0.0, z=min(z, pl.size[2] - h - 0.2), required=required)


def _desk_with_chair(pl: _Placer, required: bool) -> bool:
    desk = pl.against_wall(fb.desk(pl.rng), required=required)
    if desk is None:
        return False
    chair = fb.chair(pl.rng) if pl.rng.random() < 0.7 else fb.armchair(pl.rng)
    return pl.around(desk, chair, 0.0, pl.rng.uniform(0.05, 0.25), required=required) is not None


def _table_with_chairs(pl: _Placer, kind: str = "dining") -> None:
    """A free-standing table with one chair model around both long sides."""
    table = fb.table(pl.rng, kind)
    lo, hi = table.mesh.bounds()
    for _ in range(10):
        x = pl.rng.uniform(0.8, pl.size[0] - 0.8)
        y = pl.rng.uniform(0.8, pl.size[1] - 0.8)
        obj = pl.at(table, x, y, pl.rng.choice([0.0, np.pi / 2]))
        if obj is not None:
            break
    else:
        return
    template = fb.chair(pl.rng)
    per_side = max(1, int((hi[0] - lo[0]) // 0.6))
    for side in (0.0, np.pi):
        for i in range(per_side):
            lateral = ((i + 0.5) / per_side - 0.5) * (hi[0] - lo[0])
            pl.around(obj, template, side, pl.rng.uniform(0.05, 0.2), lateral=lateral)


def _furnish_bedroom(pl: _Placer) -> bool:
    rng = pl.rng
    bed = pl.against_wall(fb.bed(rng), required=True)
    if bed is None:
        return False
    for side in (-1, 1):
        if rng.random() < 0.7:
            pl.beside(bed, fb.cabinet(rng, "nightstand"), side)
    storage = fb.cabinet(rng, "wardrobe" if rng.random() < 0.6 else "dresser")
    if pl.against_wall(storage, required=True) is None:
        return False
    if not _curtains(pl, required=True):
        return False
    if rng.random() < 0.6:
        _picture(pl, above=bed)
    if rng.random() < 0.3:
        _desk_with_chair(pl, required=False)
    if rng.random() < 0.25:
        pl.against_wall(fb.bookshelf(rng))
    if rng.random() < 0.5:
        pl.against_wall(fb.other_furniture(rng, rng.choice(["floor lamp", "plant"])))
    return True


def _furnish_office(pl: _Placer) -> bool:
    rng = pl.rng
    if not _desk_with_chair(pl, required=True):
        return False
    if pl.against_wall(fb.bookshelf(rng), required=True) is None:
        return False
    if rng.random() < 0.35:
        _desk_with_chair(pl, required=False)
    if rng.random() < 0.5:
        pl.against_wall(fb.cabinet(rng, "file cabinet"))
    if rng.random() < 0.3:
        pl.against_wall(fb.bookshelf(rng))
    if rng.random() < 0.5:
        _curtains(pl, required=False)
    if rng.random() < 0.5:
        _picture(pl)
    if rng.random() < 0.25:
        _table_with_chairs(pl, "dining")
    for _ in range(int(rng.integers(0, 3))):
        pl.against_wall(fb.other_furniture(rng, rng.choice(["plant", "waste bin", "floor lamp"])))
    return True


def _furnish_kitchen(pl: _Placer) -> bool:
    rng = pl.rng
    wall = int(rng.integers(4))
    length = wall_frame(pl.size, wall)[3]
    width = min(rng.uniform(1.6, 3.2), length - 1.0)
    counter = pl.against_wall(fb.kitchen_counter(rng, width, with_sink=True), wall=wall, gap=0.0, required=True)
    if counter is None:
        counter = pl.against_wall(fb.kitchen_counter(rng, 1.2, with_sink=True), gap=0.0, required=True)
    if counter is None:
        return False
    fridge = fb.refrigerator(rng)
    if not any(pl.beside(counter, fridge, side, required=True) is not None for side in rng.permutation([-1, 1])):
        if pl.against_wall(fridge, required=True) is None:
            return False
    if rng.random() < 0.7:
        n_cab = max(1, int(_width_along_wall(counter) // 0.8))
        cab_w = _width_along_wall(counter) / n_cab
        for i in range(n_cab):
            along = counter.along + (i + 0.5 - n_cab / 2) * cab_w
            cab = fb.cabinet(rng, "wall cabinet")
            pl.against_wall(cab, wall=counter.wall, along=along, gap=0.0, z=rng.uniform(1.45, 1.55))
    if rng.random() < 0.4:
        pl.against_wall(fb.kitchen_counter(rng, rng.uniform(0.8, 1.6), with_sink=False), gap=0.0)
    if rng.random() < 0.6:
        _table_with_chairs(pl, "dining")
    if rng.random() < 0.4:
        _curtains(pl, required=False)
    if rng.random() < 0.3:
        _picture(pl)
    if rng.random() < 0.5:
        pl.against_wall(fb.other_furniture(rng, rng.choice(["stool", "waste bin", "plant"])))
    return True


def _furnish_bathroom(pl: _Placer) -> bool:
    rng = pl.rng
    tub = pl.in_corner(fb.bathtub(rng), required=True)
    if tub is None:
        return False
    tub_lo, tub_hi = _local_bounds(tub)
    rod = min(rng.uniform(1.9, 2.05), pl.size[2] - 0.15)
    curtain = fb.shower_curtain(rng, _width_along_wall(tub), tub.aabb_max[2] + 0.05, rod)
    gap = float(tub_hi[1] - tub_lo[1]) - 0.1
    if pl.against_wall(curtain, wall=tub.wall, along=tub.along, gap=gap, required=True) is None:
        return False
    if pl.against_wall(fb.toilet(rng), required=True) is None:
        return False
    sink = pl.against_wall(fb.bathroom_sink(rng), required=True)
    if sink is None:
        return False
    if rng.random() < 0.5:
        pl.against_wall(fb.cabinet(rng, "wall cabinet"), wall=sink.wall, along=sink.along, gap=0.0,
                        z=sink.aabb_max[2] + rng.uniform(0.45, 0.6))
    if rng.random() < 0.3:
        _picture(pl)
    if rng.random() < 0.6:
        pl.against_wall(fb.other_furniture(rng, "waste bin"))
    return True


def _furnish_living_room(pl: _Placer) -> bool:
    rng = pl.rng
    sofa = pl.against_wall(fb.sofa(rng), required=True)
    if sofa is None:
        return False
    coffee = pl.around(sofa, fb.table(rng, "coffee"), 0.0, rng.uniform(0.35, 0.5), facing=False, required=True)
    if coffee is None:
        return False
    armchair = fb.armchair(rng) if rng.random() < 0.7 else fb.chair(rng)
    placed = any(pl.around(coffee, armchair, side * np.pi / 2, rng.uniform(0.3, 0.5), required=True) is not None
                 for side in rng.permutation([-1, 1]))
    if not placed and pl.against_wall(armchair, required=True) is None:
        return False
    if not _curtains(pl, required=True):
        return False
    if _picture(pl, above=sofa, required=True) is None:
        return False
    if rng.random() < 0.8:
        pl.against_wall(fb.cabinet(rng, "tv stand"), wall=(sofa.wall + 2) % 4)
    if rng.random() < 0.6:
        pl.against_wall(fb.bookshelf(rng))
    for side in (-1, 1):
        if rng.random() < 0.4:
            pl.beside(sofa, fb.other_furniture(rng, rng.choice(["side table", "floor lamp", "plant"])), side)
    if rng.random() < 0.3:
        _picture(pl)
    if rng.random() < 0.25:
        _table_with_chairs(pl, "dining")
    return True


_PROGRAMS = {"bedroom": _furnish_bedroom, "office": _furnish_office, "kitchen": _furnish_kitchen,
             "bathroom": _furnish_bathroom, "living_room": _furnish_living_room}


def generate_layout(rng: np.random.Generator, room_type: str | None = None, max_attempts: int = 50) -> Room:
    """A furnished room of ``room_type`` (random type when None) drawn from ``rng``.

    Retries with a new room when a required object does not fit; optional objects are dropped (last first) until a
    spot MIN_FREE_RADIUS from everything is left for the sensors. RuntimeError after ``max_attempts`` failures.
    """
    if room_type is None:
        room_type = ROOM_TYPES[rng.integers(len(ROOM_TYPES))]
    if room_type not in ROOM_TYPES:
        raise ValueError(f"unknown room type {room_type!r}; room types: {', '.join(ROOM_TYPES)}")
    (w0, w1), (d0, d1) = _ROOM_SIZES[room_type]
    for _ in range(max_attempts):
        size = np.array([rng.uniform(w0, w1), rng.uniform(d0, d1), rng.uniform(2.4, 3.0)])
        openings = _openings(rng, room_type, size)
        if sum(o.kind == "window" for o in openings) < _WINDOWS[room_type][0]:
            continue
        structure = _structure(rng, size, openings)
        pl = _Placer(rng, size, FIRST_WALL_INSTANCE + 4)
        _place_openings(pl, openings)
        if not _PROGRAMS[room_type](pl):
            continue
        room = Room(room_type, size, structure, openings, pl.objects)
        while room.clearance_grid()[1].max() < MIN_FREE_RADIUS:
            optional = [i for i, o in enumerate(room.objects) if not o.required]
            if not optional:
                break
            room.objects.pop(optional[-1])
        if room.clearance_grid()[1].max() >= MIN_FREE_RADIUS:
            return room
    raise RuntimeError(f"could not lay out a {room_type} in {max_attempts} attempts")
