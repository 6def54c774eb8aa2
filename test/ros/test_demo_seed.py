"""The demo's scene is unseen by the embedded default: its seed lies outside every seed range of the config."""
from ov3dseg_core.config import load_config
from ov3dseg_core.training.config import TrainConfig
from ov3dseg_ros.commands.demo import DEMO_SEED


def test_demo_seed_is_outside_training_validation_and_heldout_seeds():
    data = load_config(TrainConfig, "ov3d_default").data
    ranges = [(data.sim_seed_start, data.sim_scenes), (data.val_seed_start, data.val_scenes),
              (data.heldout_seed_start, data.heldout_scenes)]
    assert all(n > 0 for _, n in ranges)
    assert not any(start <= DEMO_SEED < start + n for start, n in ranges)
    # and the three ranges are disjoint
    spans = sorted((start, start + n) for start, n in ranges)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
