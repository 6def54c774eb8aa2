"""Parametric furniture of the ScanNet-20 categories, randomised in size, proportion, parts and colour.

Every builder takes a ``numpy.random.Generator`` and returns a ``Furniture`` in its local frame: x across the
front (width), y from back (-depth/2, the side that goes against a wall) to front (+depth/2), z up from the floor
(or from the bottom of wall-hung pieces); the footprint is centred on the origin. Triangle labels are ScanNet-20
ids; triangle instances hold the sub-object index (0 unless an object holds several labelled sub-objects, such as
a kitchen counter's cabinet base, top and sink); each ``Assembly.add`` is one part.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ov3dseg_core.labels import SCANNET20
from ov3dseg_core.sim.shapes import Assembly, TriMesh, box, cylinder, folded_sheet

LABEL = {name: i for i, name in enumerate(SCANNET20)}
"""ScanNet-20 class id by name."""

_PALETTE = {
    "wood": [(0.55, 0.38, 0.22), (0.70, 0.52, 0.33), (0.42, 0.27, 0.16), (0.80, 0.66, 0.47), (0.33, 0.21, 0.13)],
    "white": [(0.92, 0.92, 0.90), (0.85, 0.84, 0.80), (0.95, 0.94, 0.92)],
    "grey": [(0.55, 0.56, 0.58), (0.40, 0.41, 0.43), (0.68, 0.68, 0.66)],
    "black": [(0.10, 0.10, 0.11), (0.18, 0.17, 0.17)],
    "metal": [(0.72, 0.73, 0.75), (0.60, 0.61, 0.63)],
    "fabric": [(0.20, 0.30, 0.55), (0.55, 0.15, 0.15), (0.25, 0.45, 0.30), (0.60, 0.55, 0.45), (0.35, 0.35, 0.38),
               (0.75, 0.60, 0.30), (0.45, 0.25, 0.45)],
    "bedding": [(0.90, 0.90, 0.92), (0.70, 0.80, 0.90), (0.85, 0.75, 0.70), (0.60, 0.70, 0.60)],
    "ceramic": [(0.96, 0.96, 0.96), (0.90, 0.91, 0.93)],
    "glass": [(0.60, 0.75, 0.85), (0.70, 0.80, 0.88)],
    "curtain": [(0.80, 0.75, 0.65), (0.30, 0.40, 0.60), (0.60, 0.25, 0.25), (0.85, 0.85, 0.80), (0.40, 0.50, 0.35)],
    "art": [(0.85, 0.30, 0.20), (0.20, 0.45, 0.75), (0.95, 0.80, 0.25), (0.25, 0.60, 0.35), (0.15, 0.15, 0.20),
            (0.90, 0.90, 0.85)],
    "plant": [(0.20, 0.45, 0.18), (0.28, 0.55, 0.22)],
}


def color(rng: np.random.Generator, *families: str, jitter: float = 0.04) -> np.ndarray:
    """A random albedo (3,) float32 in [0, 1] from one of the named palette families, jittered per channel."""
    family = families[rng.integers(len(families))] if len(families) > 1 else families[0]
    base = np.asarray(_PALETTE[family][rng.integers(len(_PALETTE[family]))])
    return np.clip(base + rng.uniform(-jitter, jitter, 3), 0.0, 1.0).astype(np.float32)


@dataclass
class Furniture:
    """One object in its local frame (see the module docstring).

    kind: builder name (e.g. "wardrobe"); label: main ScanNet-20 id; mesh: local-frame TriMesh;
    part_names: name of each part id; size: (3,) float64 extents in metres (width, depth, height).
    """

    kind: str
    label: int
    mesh: TriMesh
    part_names: list[str]

    @property
    def size(self) -> np.ndarray:
        lo, hi = self.mesh.bounds()
        return hi - lo


class _Parts:
    """An Assembly that also records part names."""

    def __init__(self) -> None:
        self.assembly = Assembly()
        self.names: list[str] = []

    def add(self, name: str, geometry: TriMesh, label: int, rgb, sub: int = 0) -> None:
        self.assembly.add(geometry, label, rgb, sub)
        self.names.append(name)

    def build(self, kind: str, label: int) -> Furniture:
        return Furniture(kind, label, self.assembly.mesh(), self.names)


def _legs(parts: _Parts, label: int, rgb, width: float, depth: float, height: float, thickness: float,
          inset: float = 0.0, round_legs: bool = False) -> None:
    """Four legs from the floor to ``height`` at the corners of a width x depth rectangle (inset from its edge)."""
    for sx in (-1, 1):
        for sy in (-1, 1):
            cx = sx * (width / 2 - inset - thickness / 2)
            cy = sy * (depth / 2 - inset - thickness / 2)
            if round_legs:
                leg = cylinder(thickness / 2, height, (cx, cy, 0.0), segments=10, caps=False)
            else:
                half = thickness / 2
                leg = box((cx - half, cy - half, 0.0), (cx + half, cy + half, height), omit=("-z",))
            parts.add("leg", leg, label, rgb)


def _front_panels(parts: _Parts, name: str, label: int, rgb, handle_rgb, x0: float, x1: float, z0: float, z1: float,
                  y_front: float, columns: int, rows: int, sub: int = 0, horizontal_handles: bool = False) -> None:
    """Doors or drawer fronts (a columns x rows grid with 3 mm gaps) on the plane y = y_front, each with a handle."""
    gap, thickness = 0.003, 0.018
    xs = np.linspace(x0, x1, columns + 1)
    zs = np.linspace(z0, z1, rows + 1)
    for c in range(columns):
        for r in range(rows):
            lo = (xs[c] + gap, y_front, zs[r] + gap)
            hi = (xs[c + 1] - gap, y_front + thickness, zs[r + 1] - gap)
            parts.add(name, box(lo, hi, omit=("-y",)), label, rgb, sub)
            y = y_front + thickness
            if horizontal_handles:
                xm, zm = 0.5 * (xs[c] + xs[c + 1]), zs[r + 1] - min(0.05, 0.25 * (zs[r + 1] - zs[r]))
                handle = box((xm - 0.06, y, zm - 0.008), (xm + 0.06, y + 0.025, zm + 0.008))
            else:
                # handles next to the meeting edge of paired doors, else on the right
                xh = xs[c + 1] - 0.04 if c % 2 == 0 else xs[c] + 0.04
                zm = 0.5 * (zs[r] + zs[r + 1]) if rows > 1 or z1 - z0 < 1.0 else z0 + 0.45 * (z1 - z0)
                half = min(0.08, 0.2 * (zs[r + 1] - zs[r]))
                handle = box((xh - 0.008, y, zm - half), (xh + 0.008, y + 0.025, zm + half))
            parts.add(f"{name} handle", handle, label, handle_rgb, sub)


def _hollow_box(parts: _Parts, name: str, label: int, rgb, lo, hi, wall: float, sub: int = 0) -> None:
    """An open-topped box (bottom + four walls of thickness ``wall``): tubs, basins."""
    (x0, y0, z0), (x1, y1, z1) = lo, hi
    parts.add(f"{name} bottom", box((x0, y0, z0), (x1, y1, z0 + wall)), label, rgb, sub)
    parts.add(f"{name} wall", box((x0, y0, z0 + wall), (x1, y0 + wall, z1)), label, rgb, sub)
    parts.add(f"{name} wall", box((x0, y1 - wall, z0 + wall), (x1, y1, z1)), label, rgb, sub)
    parts.add(f"{name} wall", box((x0, y0 + wall, z0 + wall), (x0 + wall, y1 - wall, z1)), label, rgb, sub)
    parts.add(f"{name} wall", box((x1 - wall, y0 + wall, z0 + wall), (x1, y1 - wall, z1)), label, rgb, sub)


def _faucet(parts: _Parts, label: int, x: float, y: float, z: float, reach: float, sub: int = 0) -> None:
    rgb = _PALETTE["metal"][0]
    parts.add("faucet", cylinder(0.015, 0.16, (x, y, z), segments=8), label, rgb, sub)
    parts.add("faucet spout", cylinder(0.011, reach, (x, y, z + 0.14), axis=1, segments=8), label, rgb, sub)


# ---------------------------------------------------------------------------------------------------------- seating
def chair(rng: np.random.Generator) -> Furniture:
    """Dining / office chair: four legs, seat, back (panel or posts with slats), sometimes armrests."""
    label = LABEL["chair"]
    w, d = rng.uniform(0.40, 0.52), rng.uniform(0.40, 0.50)
    seat_h, seat_t = rng.uniform(0.42, 0.48), rng.uniform(0.03, 0.07)
    leg = rng.uniform(0.025, 0.045)
    back_h, back_t = rng.uniform(0.35, 0.50), rng.uniform(0.025, 0.05)
    frame_rgb = color(rng, "wood", "black", "metal", "white")
    seat_rgb = frame_rgb if rng.random() < 0.4 else color(rng, "fabric")
    p = _Parts()
    _legs(p, label, frame_rgb, w, d, seat_h - seat_t, leg, round_legs=rng.random() < 0.4)
    p.add("seat", box((-w / 2, -d / 2, seat_h - seat_t), (w / 2, d / 2, seat_h)), label, seat_rgb)
    top = seat_h + back_h
    if rng.random() < 0.5:
        p.add("back", box((-w / 2, -d / 2, seat_h), (w / 2, -d / 2 + back_t, top)), label, seat_rgb)
    else:
        for sx in (-1, 1):
            x = sx * (w / 2 - leg / 2)
            p.add("back post", box((x - leg / 2, -d / 2, seat_h), (x + leg / 2, -d / 2 + leg, top)), label, frame_rgb)
        slats = int(rng.integers(2, 5))
        for z in np.linspace(seat_h + 0.12, top - 0.03, slats):
            p.add("back slat", box((-w / 2 + leg, -d / 2, z - 0.025), (w / 2 - leg, -d / 2 + back_t * 0.6, z + 0.025)),
                  label, frame_rgb)
    if rng.random() < 0.3:
        arm_z = seat_h + rng.uniform(0.18, 0.24)
        for sx in (-1, 1):
            x = sx * (w / 2 - 0.02)
            p.add("armrest", box((x - 0.025, -d / 2, arm_z - 0.03), (x + 0.025, d / 2 - 0.03, arm_z)), label, frame_rgb)
            p.add("arm support", box((x - 0.012, d / 2 - 0.08, seat_h), (x + 0.012, d / 2 - 0.05, arm_z - 0.03)),
                  label, frame_rgb)
    return p.build("chair", label)


def sofa(rng: np.random.Generator, seats: int | None = None, label: int = LABEL["sofa"],
         kind: str = "sofa") -> Furniture:
    """Sofa (or armchair with ``seats=1``): legs, base, seat cushions, back, two arms, sometimes back cushions."""
    seats = int(rng.integers(2, 4)) if seats is None else seats
    arm_w = rng.uniform(0.12, 0.25)
    seat_w = rng.uniform(0.52, 0.68)
    w = seats * seat_w + 2 * arm_w
    d = rng.uniform(0.80, 0.98)
    leg_h, seat_h = rng.uniform(0.05, 0.12), rng.uniform(0.40, 0.46)
    back_t, top = rng.uniform(0.15, 0.25), rng.uniform(0.75, 0.95)
    arm_h = rng.uniform(0.55, min(0.68, top - 0.05))
    rgb = color(rng, "fabric")
    cushion_rgb = np.clip(rgb * rng.uniform(0.85, 1.15), 0, 1)
    leg_rgb = color(rng, "wood", "black", "metal")
    p = _Parts()
    _legs(p, label, leg_rgb, w - 0.04, d - 0.04, leg_h, 0.04)
    cushion_t = rng.uniform(0.10, 0.16)
    base_top = seat_h - cushion_t
    p.add("base", box((-w / 2 + arm_w, -d / 2, leg_h), (w / 2 - arm_w, d / 2, base_top)), label, rgb)
    p.add("back", box((-w / 2 + arm_w, -d / 2, leg_h), (w / 2 - arm_w, -d / 2 + back_t, top)), label, rgb)
    for sx in (-1, 1):
        x0, x1 = sorted((sx * w / 2, sx * (w / 2 - arm_w)))
        p.add("arm", box((x0, -d / 2, leg_h), (x1, d / 2, arm_h)), label, rgb)
    xs = np.linspace(-w / 2 + arm_w, w / 2 - arm_w, seats + 1)
    for i in range(seats):
        p.add("seat cushion", box((xs[i] + 0.005, -d / 2 + back_t, base_top),
                                  (xs[i + 1] - 0.005, d / 2 - 0.01, seat_h)), label, cushion_rgb)
    if rng.random() < 0.6:
        for i in range(seats):
            p.add("back cushion", box((xs[i] + 0.01, -d / 2 + back_t, seat_h),
                                      (xs[i + 1] - 0.01, -d / 2 + back_t + 0.12, top - 0.06)), label, cushion_rgb)
    return p.build(kind, label)


def armchair(rng: np.random.Generator) -> Furniture:
    """Upholstered armchair (labelled chair, as ScanNet does)."""
    return sofa(rng, seats=1, label=LABEL["chair"], kind="armchair")


# ---------------------------------------------------------------------------------------------------------- tables
def table(rng: np.random.Generator, kind: str = "dining", label: int = LABEL["table"]) -> Furniture:
    """Table: top plus four legs (sometimes an apron) or a round top on a pedestal.

    kind: "dining" (0.72-0.78 m high), "coffee" (0.38-0.48 m) or "side" (small, 0.45-0.65 m).
    """
    dims = {"dining": ((1.0, 1.8), (0.7, 1.0), (0.72, 0.78)), "coffee": ((0.8, 1.3), (0.45, 0.7), (0.38, 0.48)),
            "side": ((0.40, 0.60), (0.40, 0.55), (0.45, 0.65))}
    if kind not in dims:
        raise ValueError(f"unknown table kind {kind!r}; kinds: {sorted(dims)}")
    (w0, w1), (d0, d1), (h0, h1) = dims[kind]
    w, d, h = rng.uniform(w0, w1), rng.uniform(d0, d1), rng.uniform(h0, h1)
    top_t = rng.uniform(0.025, 0.05)
    rgb = color(rng, "wood", "white", "black", "grey")
    leg_rgb = rgb if rng.random() < 0.6 else color(rng, "metal", "black")
    p = _Parts()
    if rng.random() < 0.25:
        r = min(w, d) / 2
        p.add("top", cylinder(r, top_t, (0.0, 0.0, h - top_t), segments=24), label, rgb)
        p.add("pedestal", cylinder(0.04, h - top_t - 0.03, (0.0, 0.0, 0.03), segments=10, caps=False), label, leg_rgb)
        p.add("foot", cylinder(0.6 * r, 0.03, (0.0, 0.0, 0.0), segments=16), label, leg_rgb)
        return p.build(f"{kind} table", label)
    p.add("top", box((-w / 2, -d / 2, h - top_t), (w / 2, d / 2, h)), label, rgb)
    leg = rng.uniform(0.035, 0.07)
    inset = rng.uniform(0.0, 0.06)
    _legs(p, label, leg_rgb, w, d, h - top_t, leg, inset=inset, round_legs=rng.random() < 0.3)
    if rng.random() < 0.5 and kind != "coffee":
        a = inset + leg
        z0 = h - top_t - 0.08
        p.add("apron", box((-w / 2 + a, -d / 2 + inset, z0), (w / 2 - a, -d / 2 + inset + 0.02, h - top_t)), label, rgb)
        p.add("apron", box((-w / 2 + a, d / 2 - inset - 0.02, z0), (w / 2 - a, d / 2 - inset, h - top_t)), label, rgb)
    if kind == "coffee" and rng.random() < 0.5:
        p.add("shelf", box((-w / 2 + inset + leg, -d / 2 + inset + leg, 0.08),
                           (w / 2 - inset - leg, d / 2 - inset - leg, 0.10)), label, rgb)
    return p.build(f"{kind} table", label)


def desk(rng: np.random.Generator) -> Furniture:
    """Desk: top on legs or side panels, often a modesty panel and a drawer pedestal."""
    label = LABEL["desk"]
    w, d, h = rng.uniform(1.0, 1.6), rng.uniform(0.55, 0.8), rng.uniform(0.72, 0.76)
    top_t = rng.uniform(0.025, 0.04)
    rgb = color(rng, "wood", "white", "grey", "black")
    frame_rgb = rgb if rng.random() < 0.5 else color(rng, "metal", "black")
    p = _Parts()
    p.add("top", box((-w / 2, -d / 2, h - top_t), (w / 2, d / 2, h)), label, rgb)
    if rng.random() < 0.5:
        _legs(p, label, frame_rgb, w, d, h - top_t, rng.uniform(0.04, 0.06), inset=0.02)
    else:
        for sx in (-1, 1):
            x0, x1 = sorted((sx * w / 2, sx * (w / 2 - 0.025)))
            p.add("side panel", box((x0, -d / 2 + 0.02, 0.0), (x1, d / 2 - 0.02, h - top_t), omit=("-z",)), label,
                  frame_rgb)
    if rng.random() < 0.6:
        p.add("modesty panel", box((-w / 2 + 0.07, -d / 2 + 0.03, h - top_t - 0.35),
                                   (w / 2 - 0.07, -d / 2 + 0.05, h - top_t)), label, frame_rgb)
    if rng.random() < 0.5:
        pw = rng.uniform(0.35, 0.45)
        sx = rng.choice([-1, 1])
        x0, x1 = sorted((sx * (w / 2 - 0.08), sx * (w / 2 - 0.08 - pw)))
        p.add("drawer pedestal", box((x0, -d / 2 + 0.06, 0.0), (x1, d / 2 - 0.06, h - top_t - 0.02), omit=("-z",)),
              label, rgb)
        _front_panels(p, "drawer", label, rgb, color(rng, "metal"), x0, x1, 0.03, h - top_t - 0.04, d / 2 - 0.06,
                      1, 3, horizontal_handles=True)
    return p.build("desk", label)


# ---------------------------------------------------------------------------------------------------------- storage
def bookshelf(rng: np.random.Generator) -> Furniture:
    """Bookshelf: two sides, top, plinth, back panel, 2-6 shelves and rows of books of varied size and colour."""
    label = LABEL["bookshelf"]
    w, d, h = rng.uniform(0.6, 1.2), rng.uniform(0.25, 0.4), rng.uniform(1.0, 2.1)
    t = rng.uniform(0.018, 0.028)
    rgb = color(rng, "wood", "white", "black")
    p = _Parts()
    for sx in (-1, 1):
        x0, x1 = sorted((sx * w / 2, sx * (w / 2 - t)))
        p.add("side", box((x0, -d / 2, 0.0), (x1, d / 2, h), omit=("-z",)), label, rgb)
    p.add("top", box((-w / 2 + t, -d / 2, h - t), (w / 2 - t, d / 2, h)), label, rgb)
    plinth = rng.uniform(0.05, 0.1)
    p.add("plinth", box((-w / 2 + t, -d / 2 + 0.01, 0.0), (w / 2 - t, d / 2 - 0.02, plinth), omit=("-z",)), label, rgb)
    p.add("back panel", box((-w / 2 + t, -d / 2, plinth), (w / 2 - t, -d / 2 + 0.008, h - t)), label, rgb)
    levels = max(3, int(round((h - plinth) / rng.uniform(0.3, 0.4))))
    boards = np.linspace(plinth, h - t, levels + 1)
    for z in boards[1:-1]:
        p.add("shelf", box((-w / 2 + t, -d / 2 + 0.008, z - t), (w / 2 - t, d / 2, z)), label, rgb)
    book_d = min(d - 0.03, 0.24)
    for z_bottom, z_top in zip(boards[:-1], boards[1:] - t):
        z_bottom = z_bottom if z_bottom > plinth else plinth
        x = -w / 2 + t + rng.uniform(0.0, 0.1)
        gap = z_top - z_bottom
        while rng.random() < 0.85:
            bw = rng.uniform(0.02, 0.06)
            if x + bw > w / 2 - t - 0.005:
                break
            bh = gap * rng.uniform(0.55, 0.9)
            p.add("book", box((x, -d / 2 + 0.01, z_bottom), (x + bw, -d / 2 + 0.01 + book_d * rng.uniform(0.7, 1.0),
                                                              z_bottom + bh), omit=("-z",)),
                  label, color(rng, "fabric", "art", "white"))
            x += bw + (rng.uniform(0.05, 0.2) if rng.random() < 0.1 else 0.002)
    return p.build("bookshelf", label)


_CABINET_DIMS = {  # width, depth, height ranges; door columns, rows; drawers?
    "wardrobe": ((0.8, 1.6), (0.5, 0.65), (1.8, 2.2)),
    "nightstand": ((0.40, 0.55), (0.35, 0.45), (0.45, 0.60)),
    "dresser": ((0.8, 1.4), (0.40, 0.55), (0.70, 1.00)),
    "tv stand": ((1.2, 1.8), (0.35, 0.50), (0.40, 0.55)),
    "wall cabinet": ((0.6, 1.2), (0.30, 0.36), (0.60, 0.80)),
    "file cabinet": ((0.40, 0.50), (0.50, 0.62), (0.70, 1.30)),
}
CABINET_KINDS = tuple(_CABINET_DIMS)


def cabinet(rng: np.random.Generator, kind: str = "wardrobe") -> Furniture:
    """Cabinet body with doors or drawers and handles; ``kind`` is one of CABINET_KINDS."""
    if kind not in _CABINET_DIMS:
        raise ValueError(f"unknown cabinet kind {kind!r}; kinds: {list(_CABINET_DIMS)}")
    label = LABEL["cabinet"]
    (w0, w1), (d0, d1), (h0, h1) = _CABINET_DIMS[kind]
    w, d, h = rng.uniform(w0, w1), rng.uniform(d0, d1), rng.uniform(h0, h1)
    rgb = color(rng, "wood", "white", "grey", "black")
    front_rgb = rgb if rng.random() < 0.6 else color(rng, "white", "wood", "grey")
    handle_rgb = color(rng, "metal", "black")
    p = _Parts()
    hanging = kind == "wall cabinet"
    plinth = 0.0 if hanging else rng.uniform(0.0, 0.08)
    p.add("body", box((-w / 2, -d / 2, 0.0), (w / 2, d / 2 - 0.02, h), omit=() if hanging else ("-z",)), label, rgb)
    if kind in ("nightstand", "dresser", "file cabinet"):
        rows = {"nightstand": int(rng.integers(1, 3)), "dresser": int(rng.integers(3, 5)),
                "file cabinet": int(rng.integers(2, 5))}[kind]
        columns = 2 if kind == "dresser" and w > 1.1 else 1
        _front_panels(p, "drawer", label, front_rgb, handle_rgb, -w / 2, w / 2, plinth, h, d / 2 - 0.02, columns, rows,
                      horizontal_handles=True)
    else:
        columns = max(1, int(round(w / rng.uniform(0.4, 0.6))))
        _front_panels(p, "door", label, front_rgb, handle_rgb, -w / 2, w / 2, plinth, h, d / 2 - 0.02, columns, 1)
    return p.build(kind, label)


def kitchen_counter(rng: np.random.Generator, width: float, with_sink: bool) -> Furniture:
    """Kitchen counter run: base cabinets with doors (cabinet, sub 0), worktop (counter, sub 1), sink (sub 2)."""
    if width < 0.6:
        raise ValueError(f"kitchen counter needs width >= 0.6 m, got {width}")
    d, h = rng.uniform(0.58, 0.64), rng.uniform(0.86, 0.9)
    top_t = rng.uniform(0.03, 0.045)
    body_rgb = color(rng, "wood", "white", "grey")
    top_rgb = color(rng, "grey", "black", "white", "wood")
    handle_rgb = color(rng, "metal")
    p = _Parts()
    cab, ctr = LABEL["cabinet"], LABEL["counter"]
    kick = 0.1
    p.add("toe kick", box((-width / 2, -d / 2, 0.0), (width / 2, d / 2 - 0.07, kick), omit=("-z",)), cab,
          color(rng, "black"))
    p.add("base cabinet", box((-width / 2, -d / 2, kick), (width / 2, d / 2 - 0.04, h - top_t)), cab, body_rgb)
    doors = max(1, int(round(width / rng.uniform(0.45, 0.6))))
    _front_panels(p, "door", cab, body_rgb, handle_rgb, -width / 2, width / 2, kick, h - top_t, d / 2 - 0.04,
                  doors, 1)
    p.add("worktop", box((-width / 2, -d / 2, h - top_t), (width / 2, d / 2, h)), ctr, top_rgb, sub=1)
    if with_sink:
        sw, sd = rng.uniform(0.45, 0.7), rng.uniform(0.38, 0.45)
        sw = min(sw, width - 0.2)
        x = rng.uniform(-width / 2 + sw / 2 + 0.1, width / 2 - sw / 2 - 0.1)
        y = -d / 2 + 0.08 + sd / 2
        _hollow_box(p, "basin", LABEL["sink"], color(rng, "metal"), (x - sw / 2, y - sd / 2, h),
                    (x + sw / 2, y + sd / 2, h + 0.03), 0.015, sub=2)
        _faucet(p, LABEL["sink"], x, -d / 2 + 0.04, h, 0.14, sub=2)
    return p.build("kitchen counter", ctr)


def refrigerator(rng: np.random.Generator) -> Furniture:
    """Refrigerator: body with one, two stacked or two side-by-side doors and bar handles."""
    label = LABEL["refrigerator"]
    w, d, h = rng.uniform(0.6, 0.9), rng.uniform(0.6, 0.75), rng.uniform(1.6, 1.95)
    rgb = color(rng, "white", "metal", "black")
    p = _Parts()
    p.add("body", box((-w / 2, -d / 2, 0.0), (w / 2, d / 2 - 0.04, h), omit=("-z",)), label, rgb)
    style = rng.integers(3)
    y, handle_rgb = d / 2 - 0.04, color(rng, "metal")
    if style == 0:
        _front_panels(p, "door", label, rgb, handle_rgb, -w / 2, w / 2, 0.02, h, y, 1, 1)
    elif style == 1:
        split = 0.02 + rng.uniform(0.3, 0.4) * h
        _front_panels(p, "freezer door", label, rgb, handle_rgb, -w / 2, w / 2, 0.02, split, y, 1, 1)
        _front_panels(p, "door", label, rgb, handle_rgb, -w / 2, w / 2, split, h, y, 1, 1)
    else:
        _front_panels(p, "door", label, rgb, handle_rgb, -w / 2, w / 2, 0.02, h, y, 2, 1)
    return p.build("refrigerator", label)


# ---------------------------------------------------------------------------------------------------------- bedroom
def bed(rng: np.random.Generator) -> Furniture:
    """Bed (headboard at the back): frame, legs, mattress, headboard, pillows, usually a duvet."""
    label = LABEL["bed"]
    double = rng.random() < 0.6
    w = rng.uniform(1.4, 1.8) if double else rng.uniform(0.9, 1.05)
    length = rng.uniform(1.95, 2.15)
    frame_h, mattress_t = rng.uniform(0.18, 0.3), rng.uniform(0.18, 0.28)
    head_h, head_t = rng.uniform(0.9, 1.25), rng.uniform(0.05, 0.09)
    wood = color(rng, "wood", "white", "black", "fabric")
    p = _Parts()
    leg_h = rng.uniform(0.06, 0.15)
    _legs(p, label, wood, w, length - head_t, leg_h, 0.06)
    p.add("headboard", box((-w / 2, -length / 2, 0.0), (w / 2, -length / 2 + head_t, head_h), omit=("-z",)), label,
          wood)
    y0 = -length / 2 + head_t
    p.add("frame", box((-w / 2, y0, leg_h), (w / 2, length / 2, leg_h + frame_h)), label, wood)
    top = leg_h + frame_h + mattress_t
    p.add("mattress", box((-w / 2 + 0.02, y0 + 0.01, leg_h + frame_h), (w / 2 - 0.02, length / 2 - 0.02, top)), label,
          color(rng, "bedding"))
    pillows = 2 if double else 1
    pw = (w - 0.12) / pillows
    pillow_rgb = color(rng, "bedding")
    for i in range(pillows):
        x0 = -w / 2 + 0.06 + i * pw
        p.add("pillow", box((x0 + 0.02, y0 + 0.04, top), (x0 + pw - 0.02, y0 + rng.uniform(0.38, 0.5), top + 0.12)),
              label, pillow_rgb)
    if rng.random() < 0.8:
        cover = rng.uniform(0.6, 0.75) * (length - head_t)
        p.add("duvet", box((-w / 2, length / 2 - cover, top - 0.15), (w / 2, length / 2, top + 0.04), omit=("-z",)),
              label, color(rng, "bedding"))
    return p.build("bed", label)


# ---------------------------------------------------------------------------------------------------------- bathroom
def toilet(rng: np.random.Generator) -> Furniture:
    """Toilet: pedestal, bowl, seat, lid, tank (at the back) and flush button."""
    label = LABEL["toilet"]
    rgb = color(rng, "ceramic", jitter=0.02)
    tank_w, tank_d, tank_h = rng.uniform(0.36, 0.46), rng.uniform(0.15, 0.2), rng.uniform(0.3, 0.4)
    bowl_r, bowl_len = rng.uniform(0.17, 0.2), rng.uniform(1.2, 1.35)
    seat_h = rng.uniform(0.38, 0.43)
    depth = tank_d + 2 * bowl_r * bowl_len
    y_bowl = -depth / 2 + tank_d + bowl_r * bowl_len - 0.02
    p = _Parts()

    def oval(mesh: TriMesh) -> TriMesh:
        v = mesh.vertices.copy()
        v[:, 1] = y_bowl + (v[:, 1] - y_bowl) * bowl_len
        return TriMesh(v, mesh.triangles, mesh.labels, mesh.instances, mesh.parts, mesh.colors)

    p.add("pedestal", oval(cylinder(0.6 * bowl_r, 0.22, (0.0, y_bowl, 0.0), segments=16, top_radius=0.8 * bowl_r)),
          label, rgb)
    p.add("bowl", oval(cylinder(0.8 * bowl_r, seat_h - 0.25, (0.0, y_bowl, 0.22), segments=16, top_radius=bowl_r)),
          label, rgb)
    p.add("seat", oval(cylinder(bowl_r, 0.03, (0.0, y_bowl, seat_h - 0.03), segments=16)), label,
          rgb if rng.random() < 0.7 else color(rng, "black"))
    tank_top = seat_h + tank_h
    p.add("tank", box((-tank_w / 2, -depth / 2, seat_h), (tank_w / 2, -depth / 2 + tank_d, tank_top)), label, rgb)
    p.add("tank lid", box((-tank_w / 2 - 0.01, -depth / 2, tank_top),
                          (tank_w / 2 + 0.01, -depth / 2 + tank_d + 0.01, tank_top + 0.025)), label, rgb)
    p.add("flush button", cylinder(0.02, 0.01, (0.0, -depth / 2 + tank_d / 2, seat_h + tank_h + 0.025), segments=8),
          label, _PALETTE["metal"][0])
    p.add("connector", box((-0.08, -depth / 2 + 0.02, 0.22), (0.08, -depth / 2 + tank_d, seat_h)), label, rgb)
    return p.build("toilet", label)


def bathroom_sink(rng: np.random.Generator) -> Furniture:
    """Wash basin: on a pedestal (all sink) or on a vanity cabinet (cabinet, sub 1) with doors."""
    w, d = rng.uniform(0.5, 0.8), rng.uniform(0.4, 0.5)
    h = rng.uniform(0.8, 0.88)
    rgb = color(rng, "ceramic", jitter=0.02)
    sink = LABEL["sink"]
    p = _Parts()
    if rng.random() < 0.5:
        p.add("pedestal", cylinder(0.09, h - 0.16, (0.0, -d / 2 + 0.16, 0.0), segments=14, top_radius=0.07), sink, rgb)
    else:
        cab = LABEL["cabinet"]
        body_rgb = color(rng, "wood", "white", "grey")
        p.add("vanity", box((-w / 2, -d / 2, 0.0), (w / 2, d / 2 - 0.02, h - 0.16), omit=("-z",)), cab, body_rgb, sub=1)
        _front_panels(p, "door", cab, body_rgb, color(rng, "metal"), -w / 2, w / 2, 0.05, h - 0.16, d / 2 - 0.02,
                      2 if w > 0.6 else 1, 1, sub=1)
    _hollow_box(p, "basin", sink, rgb, (-w / 2, -d / 2, h - 0.16), (w / 2, d / 2, h), 0.03)
    _faucet(p, sink, 0.0, -d / 2 + 0.05, h, 0.1)
    return p.build("sink", sink)


def bathtub(rng: np.random.Generator) -> Furniture:
    """Bathtub along the wall (length along x): bottom, four walls and a faucet."""
    label = LABEL["bathtub"]
    w, d, h = rng.uniform(1.5, 1.8), rng.uniform(0.7, 0.8), rng.uniform(0.5, 0.6)
    p = _Parts()
    _hollow_box(p, "tub", label, color(rng, "ceramic", jitter=0.02), (-w / 2, -d / 2, 0.0), (w / 2, d / 2, h),
                rng.uniform(0.06, 0.09))
    side = rng.choice([-1, 1])
    _faucet(p, label, side * (w / 2 - 0.04), 0.0, h, 0.12)
    return p.build("bathtub", label)


def shower_curtain(rng: np.random.Generator, length: float, bottom: float, rod_height: float) -> Furniture:
    """Shower curtain on a rod spanning ``length`` (x), hanging from ``rod_height`` down to ``bottom`` (absolute z;
    the local frame keeps absolute heights, so place it with z = 0)."""
    label = LABEL["shower curtain"]
    drawn = rng.uniform(0.35, 1.0) * length
    amplitude = rng.uniform(0.03, 0.06)
    p = _Parts()
    p.add("rod", cylinder(0.012, length, (-length / 2, amplitude / 2, rod_height), axis=0, segments=8), label,
          _PALETTE["metal"][0])
    x0 = -length / 2 if rng.random() < 0.5 else length / 2 - drawn
    folds = max(2, int(drawn / 0.1))
    p.add("curtain", folded_sheet(drawn, rod_height - bottom, folds, amplitude, (x0, 0.0, bottom)), label,
          color(rng, "white", "curtain", "glass"))
    return p.build("shower curtain", label)


# ---------------------------------------------------------------------------------------------------------- walls
def curtain(rng: np.random.Generator, window_width: float, top: float, bottom: float,
            max_width: float = np.inf) -> Furniture:
    """Window curtains: a rod and two folded panels drawn to the sides, at most ``max_width`` wide overall;
    absolute heights (place with z = 0)."""
    label = LABEL["curtain"]
    rgb = color(rng, "curtain")
    amplitude = rng.uniform(0.04, 0.08)
    overhang = max(0.0, min(rng.uniform(0.12, 0.25), (max_width - window_width) / 2 - 0.05))
    span = window_width + 2 * overhang
    p = _Parts()
    p.add("rod", cylinder(0.013, span + 0.1, (-span / 2 - 0.05, amplitude / 2, top + 0.03), axis=0, segments=8), label,
          color(rng, "metal", "black", "wood"))
    for side in (-1, 1):
        pw = overhang + rng.uniform(0.15, 0.45) * window_width / 2
        x0 = -span / 2 if side < 0 else span / 2 - pw
        p.add("panel", folded_sheet(pw, top - bottom, max(2, int(pw / 0.1)), amplitude, (x0, 0.0, bottom)), label, rgb)
    return p.build("curtain", label)


def picture(rng: np.random.Generator) -> Furniture:
    """Framed picture (thin, hung on a wall; z from its bottom edge): frame bars and a canvas of colour blocks."""
    label = LABEL["picture"]
    w, h = rng.uniform(0.3, 1.1), rng.uniform(0.25, 0.8)
    t, fw = rng.uniform(0.02, 0.045), rng.uniform(0.02, 0.05)
    frame_rgb = color(rng, "wood", "black", "white", "metal")
    p = _Parts()
    p.add("canvas", box((-w / 2 + fw, -t / 2, fw), (w / 2 - fw, t / 2 - 0.005, h - fw), omit=("-y",)), label,
          color(rng, "art"))
    for lo, hi in (((-w / 2, -t / 2, 0.0), (w / 2, t / 2, fw)), ((-w / 2, -t / 2, h - fw), (w / 2, t / 2, h)),
                   ((-w / 2, -t / 2, fw), (-w / 2 + fw, t / 2, h - fw)),
                   ((w / 2 - fw, -t / 2, fw), (w / 2, t / 2, h - fw))):
        p.add("frame", box(lo, hi, omit=("-y",)), label, frame_rgb)
    blocks = int(rng.integers(1, 4))
    for _ in range(blocks):
        bw, bh = rng.uniform(0.2, 0.6) * (w - 2 * fw), rng.uniform(0.2, 0.6) * (h - 2 * fw)
        x = rng.uniform(-w / 2 + fw, w / 2 - fw - bw)
        z = rng.uniform(fw, h - fw - bh)
        p.add("motif", box((x, t / 2 - 0.005, z), (x + bw, t / 2 - 0.002, z + bh), omit=("-y",)), label,
              color(rng, "art"))
    return p.build("picture", label)


def door(rng: np.random.Generator, width: float, height: float) -> Furniture:
    """Door closing a wall opening of ``width`` x ``height`` (x along the wall, y = 0 the wall plane, +y into the
    room): panel filling the opening, casing, handle and sometimes raised panels."""
    label = LABEL["door"]
    rgb = color(rng, "white", "wood", "grey")
    casing_rgb = rgb if rng.random() < 0.5 else color(rng, "white")
    p = _Parts()
    p.add("panel", box((-width / 2, -0.02, 0.0), (width / 2, 0.02, height), omit=("-z",)), label, rgb)
    c = rng.uniform(0.05, 0.09)
    for lo, hi in (((-width / 2 - c, 0.0, 0.0), (-width / 2, 0.015, height + c)),
                   ((width / 2, 0.0, 0.0), (width / 2 + c, 0.015, height + c)),
                   ((-width / 2, 0.0, height), (width / 2, 0.015, height + c))):
        p.add("casing", box(lo, hi, omit=("-y", "-z")), label, casing_rgb)
    if rng.random() < 0.5:
        for z0, z1 in ((0.15, 0.45 * height), (0.55 * height, height - 0.15)):
            p.add("raised panel", box((-width / 2 + 0.12, 0.02, z0), (width / 2 - 0.12, 0.03, z1), omit=("-y",)), label,
                  np.clip(rgb * 0.95, 0, 1))
    side = rng.choice([-1, 1])
    x = side * (width / 2 - 0.07)
    metal = color(rng, "metal")
    p.add("handle rose", cylinder(0.025, 0.015, (x, 0.02, 1.0), axis=1, segments=10), label, metal)
    p.add("handle", cylinder(0.01, 0.12, (x - side * 0.12, 0.06, 1.0), axis=0, segments=8), label, metal)
    return p.build("door", label)


def window(rng: np.random.Generator, width: float, height: float) -> Furniture:
    """Window in a wall opening of ``width`` x ``height`` (same frame as ``door``; z from the sill): frame,
    glazing bars, glass and an inside sill."""
    label = LABEL["window"]
    frame_rgb = color(rng, "white", "wood", "grey", "black")
    f = rng.uniform(0.04, 0.07)
    p = _Parts()
    for lo, hi in (((-width / 2, -0.05, 0.0), (width / 2, 0.03, f)),
                   ((-width / 2, -0.05, height - f), (width / 2, 0.03, height)),
                   ((-width / 2, -0.05, f), (-width / 2 + f, 0.03, height - f)),
                   ((width / 2 - f, -0.05, f), (width / 2, 0.03, height - f))):
        p.add("frame", box(lo, hi), label, frame_rgb)
    if width > 0.9 or rng.random() < 0.5:
        p.add("mullion", box((-0.02, -0.04, f), (0.02, 0.02, height - f)), label, frame_rgb)
    if rng.random() < 0.4:
        p.add("transom", box((-width / 2 + f, -0.04, 0.7 * height - 0.02), (width / 2 - f, 0.02, 0.7 * height + 0.02)),
              label, frame_rgb)
    p.add("glass", box((-width / 2 + f, -0.03, f), (width / 2 - f, -0.02, height - f)), label, color(rng, "glass"))
    p.add("sill", box((-width / 2 - 0.05, 0.0, -0.03), (width / 2 + 0.05, rng.uniform(0.06, 0.14), 0.0), omit=("-y",)),
          label, frame_rgb)
    return p.build("window", label)


# ---------------------------------------------------------------------------------------------------------- other
def other_furniture(rng: np.random.Generator, kind: str | None = None) -> Furniture:
    """Catch-all "other furniture": floor lamp, side table, stool, waste bin or potted plant (``kind`` or random)."""
    label = LABEL["other furniture"]
    kinds = ("floor lamp", "side table", "stool", "waste bin", "plant")
    kind = kinds[rng.integers(len(kinds))] if kind is None else str(kind)
    if kind == "side table":
        f = table(rng, "side", label=label)
        return Furniture("side table", label, f.mesh, f.part_names)
    p = _Parts()
    if kind == "floor lamp":
        h, r = rng.uniform(1.4, 1.8), rng.uniform(0.15, 0.25)
        metal = color(rng, "metal", "black")
        p.add("base", cylinder(0.14, 0.03, (0.0, 0.0, 0.0), segments=16), label, metal)
        p.add("pole", cylinder(0.012, h - 0.3, (0.0, 0.0, 0.03), segments=8, caps=False), label, metal)
        p.add("shade", cylinder(r, 0.3, (0.0, 0.0, h - 0.3), segments=20, top_radius=0.7 * r), label,
              color(rng, "white", "curtain"))
    elif kind == "stool":
        h, s = rng.uniform(0.45, 0.75), rng.uniform(0.3, 0.4)
        rgb = color(rng, "wood", "black", "metal")
        _legs(p, label, rgb, s, s, h - 0.04, 0.03, round_legs=True)
        p.add("seat", cylinder(s / 2 + 0.02, 0.04, (0.0, 0.0, h - 0.04), segments=16), label, rgb)
        p.add("footrest", box((-s / 2, -s / 2, 0.2), (s / 2, -s / 2 + 0.03, 0.23)), label, rgb)
    elif kind == "waste bin":
        r, h = rng.uniform(0.12, 0.18), rng.uniform(0.3, 0.45)
        p.add("bin", cylinder(0.85 * r, h, (0.0, 0.0, 0.0), segments=14, top_radius=r), label,
              color(rng, "grey", "black", "white", "metal"))
    elif kind == "plant":
        r, h = rng.uniform(0.12, 0.2), rng.uniform(0.25, 0.4)
        p.add("pot", cylinder(0.75 * r, h, (0.0, 0.0, 0.0), segments=14, top_radius=r), label,
              color(rng, "ceramic", "black", "wood"))
        foliage = rng.uniform(0.4, 1.0)
        for _ in range(int(rng.integers(3, 6))):
            fr = rng.uniform(0.5, 0.9) * r
            x, y = rng.uniform(-0.3, 0.3, 2) * r
            p.add("foliage", cylinder(fr, foliage * rng.uniform(0.5, 1.0), (x, y, h), segments=8, top_radius=0.3 * fr),
                  label, color(rng, "plant"))
    else:
        raise ValueError(f"unknown other furniture kind {kind!r}; kinds: {kinds}")
    return p.build(kind, label)
