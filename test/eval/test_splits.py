"""The shipped split files load and are consistent with the published PLA partitions."""
import numpy as np
import pytest

from ov3dseg_core.eval.splits import Split, SplitError, available_splits, load_split
from ov3dseg_core.labels import IGNORE_LABEL, SCANNET20

# name -> (number of classes, base, novel, ignore)
EXPECTED = {
    "scannet_b15n4": (20, 15, 4, 1),
    "scannet_b12n7": (20, 12, 7, 1),
    "scannet_b10n9": (20, 10, 9, 1),
    "sim_b15n4": (20, 15, 4, 1),
    "s3dis_b8n4": (13, 8, 4, 1),
    "s3dis_b6n6": (13, 6, 6, 1),
    # PLA's B170 = 159 trained base classes + 11 train-only classes its config ignores
    "scannet200_b170n30": (200, 159, 30, 11),
    "scannet200_b150n50": (200, 150, 50, 0),
}


def test_all_expected_splits_are_shipped():
    assert set(available_splits()) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_split_counts_and_partition(name):
    split = load_split(name)
    assert split.name == name
    n, b, nv, ig = EXPECTED[name]
    assert (len(split.classes), len(split.base), len(split.novel), len(split.ignore)) == (n, b, nv, ig)
    assert set(split.base).isdisjoint(split.novel) and set(split.ignore).isdisjoint(split.base + split.novel)
    assert set(split.base) | set(split.novel) | set(split.ignore) == set(split.classes)
    assert len(split.evaluated) == b + nv


def test_scannet_splits_use_scannet20_ids_and_published_novel_sets():
    novel = {
        "scannet_b15n4": {"sofa", "bookshelf", "desk", "toilet"},
        "scannet_b12n7": {"bed", "chair", "table", "bookshelf", "picture", "sink", "bathtub"},
        "scannet_b10n9": {"bookshelf", "picture", "counter", "desk", "refrigerator", "shower curtain", "toilet",
                          "sink", "bathtub"},
    }
    for name, expected in novel.items():
        split = load_split(name)
        assert list(split.classes) == SCANNET20
        assert set(split.novel) == expected
        assert split.ignore == ("other furniture",)
    sim, scannet = load_split("sim_b15n4"), load_split("scannet_b15n4")
    assert (sim.classes, sim.base, sim.novel, sim.ignore) == (scannet.classes, scannet.base, scannet.novel,
                                                              scannet.ignore)


def test_s3dis_novel_sets_follow_pla_configs():
    assert set(load_split("s3dis_b8n4").novel) == {"window", "table", "sofa", "bookcase"}
    assert set(load_split("s3dis_b6n6").novel) == {"floor", "window", "door", "table", "bookcase", "board"}
    assert load_split("s3dis_b8n4").ignore == ("clutter",)


def test_scannet200_class_order_and_known_members():
    b170, b150 = load_split("scannet200_b170n30"), load_split("scannet200_b150n50")
    assert b170.classes == b150.classes
    assert b170.classes[:3] == ("wall", "chair", "floor") and b170.classes[-1] == "mattress"
    assert "pillow" in b170.novel and "couch" in b150.novel  # ids 11 and 5 in PLA's novel_class_idx
    assert set(b170.ignore) <= set(b150.base)  # the train-only classes


def test_label_lookup_by_name():
    split = load_split("scannet_b15n4")
    lut = split.label_lookup(SCANNET20)
    assert lut.shape == (21,)
    assert lut[SCANNET20.index("other furniture")] == IGNORE_LABEL and lut[-1] == IGNORE_LABEL
    assert split.evaluated[lut[SCANNET20.index("toilet")]] == "toilet"
    # a subset of names in another order maps by name
    lut = split.label_lookup(["toilet", "wall"])
    np.testing.assert_array_equal(lut, [split.evaluated.index("toilet"), 0, IGNORE_LABEL])
    with pytest.raises(SplitError, match="no classes"):
        split.label_lookup(["wall", "couch"])


def test_inconsistent_or_missing_splits_raise(tmp_path):
    with pytest.raises(SplitError, match="both base and novel"):
        Split("x", "d", ("a", "b"), base=("a", "b"), novel=("b",))
    with pytest.raises(SplitError, match="none of"):
        Split("x", "d", ("a", "b", "c"), base=("a",), novel=("b",))
    with pytest.raises(SplitError, match="not in its class list"):
        Split("x", "d", ("a", "b"), base=("a",), novel=("z",), ignore=("b",))
    with pytest.raises(SplitError, match="shipped splits"):
        load_split("scannet_b99n1")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ndataset: d\nclasses: [a, b]\nbase: [a]\nnovel: [b]\nextra: 1\n")
    with pytest.raises(SplitError, match="unknown keys"):
        load_split(bad)
    good = tmp_path / "good.yaml"
    good.write_text("name: good\ndataset: d\nclasses: [a, b]\nbase: [a]\nnovel: [b]\n")
    assert load_split(good).evaluated == ["a", "b"]
