"""Parametric meshes and furniture builders: geometry, parts, labels, variation."""
import numpy as np
import pytest

from ov3dseg_core.labels import SCANNET20
from ov3dseg_core.sim import furniture as fb
from ov3dseg_core.sim.shapes import box, concatenate, cylinder, folded_sheet, quad


def test_box_geometry_and_outward_normals():
    mesh = box((0, 0, 0), (1, 2, 3))
    assert mesh.num_triangles == 12
    assert mesh.areas().sum() == pytest.approx(2 * (1 * 2 + 2 * 3 + 1 * 3))
    centroids = mesh.corners().mean(axis=1)
    outward = np.einsum("ij,ij->i", mesh.normals(), centroids - np.array([0.5, 1.0, 1.5]))
    assert np.all(outward > 0)
    lo, hi = mesh.bounds()
    np.testing.assert_allclose(lo, [0, 0, 0])
    np.testing.assert_allclose(hi, [1, 2, 3])


def test_box_omits_faces_and_rejects_bad_input():
    mesh = box((0, 0, 0), (1, 1, 1), omit=("-z", "+y"))
    assert mesh.num_triangles == 8
    assert not np.any(np.isclose(mesh.normals() @ [0, 0, -1.0], 1.0))
    with pytest.raises(ValueError, match="lo < hi"):
        box((0, 0, 0), (1, 0, 1))
    with pytest.raises(ValueError, match="unknown box faces"):
        box((0, 0, 0), (1, 1, 1), omit=("top",))


def test_cylinder_area_and_axis():
    r, h, n = 0.5, 2.0, 64
    mesh = cylinder(r, h, segments=n)
    polygon = 0.5 * n * r * r * np.sin(2 * np.pi / n)  # area of the n-gon cap
    side = n * 2 * r * np.sin(np.pi / n) * h
    assert mesh.areas().sum() == pytest.approx(2 * polygon + side)
    lo, hi = cylinder(0.1, 1.0, base_center=(1, 2, 3), axis=0).bounds()
    np.testing.assert_allclose(lo, [1, 1.9, 2.9], atol=1e-9)
    np.testing.assert_allclose(hi, [2, 2.1, 3.1], atol=1e-9)
    frustum = cylinder(1.0, 1.0, top_radius=0.5, segments=32, caps=False)
    used = frustum.vertices[np.unique(frustum.triangles)]
    top = used[used[:, 2] == 1.0]
    assert len(top) == 32
    np.testing.assert_allclose(np.linalg.norm(top[:, :2], axis=1), 0.5)


def test_quad_sheet_and_concatenate_keep_attributes():
    a = quad((0, 0, 0), (2, 0, 0), (0, 0, 1)).with_attributes(label=0, instance=3, part=0, color=(1, 0, 0))
    b = folded_sheet(1.0, 2.0, folds=3, amplitude=0.1).with_attributes(label=13, instance=4, part=1, color=(0, 1, 0))
    both = concatenate([a, b])
    assert both.areas()[:2].sum() == pytest.approx(2.0)
    assert both.areas()[2:].sum() > 2.0  # the folds make the sheet larger than its 1 x 2 outline
    assert both.triangles.max() == len(both.vertices) - 1
    np.testing.assert_array_equal(both.labels, [0, 0] + [13] * b.num_triangles)
    np.testing.assert_array_equal(both.instances[:2], [3, 3])
    assert both.bounds()[1][1] == pytest.approx(0.1)


@pytest.mark.parametrize("seed", range(6))
def test_chair_has_legs_seat_back_as_separate_parts(seed):
    chair = fb.chair(np.random.default_rng(seed))
    assert len(np.unique(chair.mesh.parts)) >= 6
    assert chair.part_names.count("leg") == 4 and "seat" in chair.part_names
    assert "back" in chair.part_names or "back slat" in chair.part_names
    # every part groups several triangles and the whole chair is one instance of class chair
    assert np.bincount(chair.mesh.parts).min() >= 8
    assert set(chair.mesh.labels) == {SCANNET20.index("chair")}
    assert set(chair.mesh.instances) == {0}
    w, d, h = chair.size
    assert 0.4 <= w <= 0.53 and 0.4 <= d <= 0.51 and 0.75 <= h <= 1.0


@pytest.mark.parametrize("seed", range(6))
def test_bookshelf_has_shelves_between_its_sides(seed):
    shelf = fb.bookshelf(np.random.default_rng(seed))
    mesh = shelf.mesh
    boards = [i for i, name in enumerate(shelf.part_names) if name == "shelf"]
    assert len(boards) >= 2
    heights = []
    for part in boards:
        lo, hi = mesh.select(mesh.parts == part).bounds()
        assert hi[2] - lo[2] < 0.03  # a horizontal board
        assert hi[0] - lo[0] > 0.9 * (shelf.size[0] - 0.06)  # spanning the inside width
        heights.append(hi[2])
    assert np.all(np.diff(heights) > 0.2)
    assert shelf.part_names.count("book") >= 1


def test_variation_between_seeds():
    sizes = np.array([fb.table(np.random.default_rng(s)).size for s in range(8)])
    assert np.ptp(sizes[:, 0]) > 0.2 and np.ptp(sizes[:, 2]) > 0.02
    colors = {tuple(np.round(fb.sofa(np.random.default_rng(s)).mesh.colors[0], 2)) for s in range(8)}
    assert len(colors) >= 4
    parts = {len(fb.chair(np.random.default_rng(s)).part_names) for s in range(12)}
    assert len(parts) >= 3  # panel vs slatted backs, armrests


BUILDERS = {
    "cabinet": lambda r: fb.cabinet(r, "wardrobe"), "bed": fb.bed, "chair": fb.chair, "sofa": fb.sofa,
    "table": fb.table, "door": lambda r: fb.door(r, 0.9, 2.0), "window": lambda r: fb.window(r, 1.2, 1.2),
    "bookshelf": fb.bookshelf, "picture": fb.picture, "desk": fb.desk,
    "curtain": lambda r: fb.curtain(r, 1.2, 2.2, 0.02), "refrigerator": fb.refrigerator,
    "shower curtain": lambda r: fb.shower_curtain(r, 1.6, 0.65, 2.0), "toilet": fb.toilet, "sink": fb.bathroom_sink,
    "bathtub": fb.bathtub, "other furniture": fb.other_furniture,
    "counter": lambda r: fb.kitchen_counter(r, 2.0, with_sink=True),
}


@pytest.mark.parametrize("category", sorted(BUILDERS))
def test_builders_label_their_category(category):
    furniture = BUILDERS[category](np.random.default_rng(1))
    assert furniture.label == SCANNET20.index(category)
    assert SCANNET20.index(category) in set(furniture.mesh.labels)
    assert len(furniture.part_names) == len(np.unique(furniture.mesh.parts))
    assert np.all(furniture.mesh.areas() > 0)
    assert np.all((furniture.mesh.colors >= 0) & (furniture.mesh.colors <= 1))


def test_kitchen_counter_holds_three_labelled_sub_objects():
    counter = fb.kitchen_counter(np.random.default_rng(2), 2.4, with_sink=True).mesh
    by_sub = {int(s): set(counter.labels[counter.instances == s]) for s in np.unique(counter.instances)}
    assert by_sub == {0: {SCANNET20.index("cabinet")}, 1: {SCANNET20.index("counter")}, 2: {SCANNET20.index("sink")}}
    lo, hi = counter.bounds()
    assert hi[0] - lo[0] == pytest.approx(2.4)
    with pytest.raises(ValueError, match="width"):
        fb.kitchen_counter(np.random.default_rng(0), 0.3, with_sink=False)


def test_open3d_export_matches_numpy_geometry():
    chair = fb.chair(np.random.default_rng(4)).mesh
    mesh = chair.to_open3d()
    assert mesh.get_surface_area() == pytest.approx(chair.areas().sum(), rel=1e-5)
    np.testing.assert_array_equal(mesh.triangle.labels.numpy(), chair.labels)
    legacy = mesh.to_legacy()
    legacy.compute_triangle_normals()
    np.testing.assert_allclose(np.asarray(legacy.triangle_normals), chair.normals(), atol=1e-5)
