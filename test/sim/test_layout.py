"""Room layouts: room programs, no intersections, inside the room, walls cut around openings, determinism."""
import numpy as np
import pytest

from ov3dseg_core.labels import IGNORE_LABEL, SCANNET20
from ov3dseg_core.sim.layout import (MIN_FREE_RADIUS, ROOM_CATEGORIES, ROOM_TYPES, aabb_overlaps, box_distance,
                                     generate_layout, wall_frame, wall_transform)

SEEDS = range(4)


@pytest.fixture(scope="module")
def rooms():
    return {(t, s): generate_layout(np.random.default_rng(s), t) for t in ROOM_TYPES for s in SEEDS}


def test_aabb_overlaps_and_box_distance_by_hand():
    lo, hi = np.zeros(3), np.ones(3)
    others_lo = np.array([[0.5, 0.5, 0.5], [1.01, 0, 0], [2, 2, 2], [-1.1, -1, -1]])
    others_hi = others_lo + 1
    np.testing.assert_array_equal(aabb_overlaps(lo, hi, others_lo, others_hi), [True, False, False, False])
    np.testing.assert_array_equal(aabb_overlaps(lo, hi, others_lo, others_hi, margin=0.02), [True, True, False, False])
    d = box_distance(np.array([[0.5, 0.5, 0.5], [3.0, 0.5, 0.5], [2.0, 2.0, 0.5]]), lo[None], hi[None])[:, 0]
    np.testing.assert_allclose(d, [0.0, 2.0, np.sqrt(2.0)])


def test_wall_frames_are_right_handed_and_inward():
    size = np.array([4.0, 3.0, 2.5])
    for wall in range(4):
        start, u, n, length = wall_frame(size, wall)
        np.testing.assert_allclose(np.cross(u, n), [0, 0, 1])
        mid = start + 0.5 * length * u + 0.1 * n  # a step off the middle of the wall lands inside the room
        assert 0 < mid[0] < size[0] and 0 < mid[1] < size[1]
        T = wall_transform(size, wall, 1.0, 0.2, z=0.5)
        np.testing.assert_allclose(T[:3, 3], start + 1.0 * u + 0.2 * n + [0, 0, 0.5])


@pytest.mark.parametrize("room_type", ROOM_TYPES)
def test_room_types_contain_their_categories(rooms, room_type):
    for seed in SEEDS:
        room = rooms[room_type, seed]
        present = {SCANNET20[i] for i in np.unique(room.mesh().labels) if i != IGNORE_LABEL}
        assert set(ROOM_CATEGORIES[room_type]) <= present, (seed, set(ROOM_CATEGORIES[room_type]) - present)


def test_bathrooms_have_no_beds_and_bedrooms_no_toilets(rooms):
    for seed in SEEDS:
        assert SCANNET20.index("bed") not in rooms["bathroom", seed].mesh().labels
        assert SCANNET20.index("toilet") not in rooms["bedroom", seed].mesh().labels


@pytest.mark.parametrize("room_type", ROOM_TYPES)
def test_objects_do_not_intersect_and_stay_inside(rooms, room_type):
    for seed in SEEDS:
        room = rooms[room_type, seed]
        furniture = [o for o in room.objects if not o.in_wall]
        for i, a in enumerate(furniture):
            mesh_lo, mesh_hi = a.mesh.bounds()
            np.testing.assert_allclose(mesh_lo, a.aabb_min)
            np.testing.assert_allclose(mesh_hi, a.aabb_max)
            assert np.all(a.aabb_min >= -1e-9) and np.all(a.aabb_max <= room.size + 1e-9), a.kind
            others = furniture[i + 1:] + [o for o in room.objects if o.in_wall]
            if others:
                hits = aabb_overlaps(a.aabb_min, a.aabb_max, np.stack([o.aabb_min for o in others]),
                                     np.stack([o.aabb_max for o in others]))
                assert not hits.any(), (a.kind, [o.kind for o, h in zip(others, hits) if h])
        for opening in (o for o in room.objects if o.in_wall):  # doors / windows sit in their wall plane
            _, _, normal, _ = wall_frame(room.size, opening.wall)
            depth = (opening.mesh.vertices - opening.T_world_object[:3, 3]) @ normal
            assert depth.min() >= -0.06 and depth.max() <= 0.15
        assert room.clearance_grid()[1].max() >= MIN_FREE_RADIUS


def test_instances_are_unique_per_object(rooms):
    room = rooms["kitchen", 0]
    mesh = room.mesh()
    seen = [i for o in room.objects for i in o.instances]
    assert len(seen) == len(set(seen))
    for obj in room.objects:
        assert set(np.unique(obj.mesh.instances)) == set(obj.instances)
    # each instance carries one class
    for inst in np.unique(mesh.instances):
        assert len(np.unique(mesh.labels[mesh.instances == inst])) == 1


def test_walls_are_cut_around_openings(rooms):
    room = rooms["bedroom", 1]
    w, d, h = room.size
    mesh = room.structure
    wall_area = mesh.areas()[mesh.labels == SCANNET20.index("wall")].sum()
    holes = sum(o.width * o.height for o in room.openings)
    assert wall_area == pytest.approx(2 * (w + d) * h - holes)
    assert mesh.areas()[mesh.labels == SCANNET20.index("floor")].sum() == pytest.approx(w * d)
    assert mesh.areas()[mesh.labels == IGNORE_LABEL].sum() == pytest.approx(w * d)  # the ceiling


def test_layout_is_deterministic_by_seed():
    a = generate_layout(np.random.default_rng(5), "office").mesh()
    b = generate_layout(np.random.default_rng(5), "office").mesh()
    c = generate_layout(np.random.default_rng(6), "office").mesh()
    for name in ("vertices", "triangles", "labels", "instances", "colors"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.vertices.shape != c.vertices.shape or not np.array_equal(a.vertices, c.vertices)


def test_unknown_room_type_is_rejected():
    with pytest.raises(ValueError, match="unknown room type 'garage'"):
        generate_layout(np.random.default_rng(0), "garage")
