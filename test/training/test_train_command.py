"""`ov3dseg train` and `ov3dseg evaluate` end to end on two tiny simulated scenes (the CI's short training run)."""
import json

import numpy as np
import yaml

from ov3dseg_core.cli import main as cli_main
from ov3dseg_core.training.checkpoint import load_checkpoint, read_metadata
from ov3dseg_core.training.scenes import COMPLETE_MARKER


def test_train_then_evaluate(tmp_path, capsys):
    config = {
        "split": "sim_b15n4",
        "data": {"sim_seed_start": 4, "sim_scenes": 1, "val_seed_start": 9, "val_scenes": 1,
                 "heldout_seed_start": 7, "heldout_scenes": 1,
                 "sim_frames": 4, "sim_width": 160, "sim_height": 120, "cache_dir": str(tmp_path / "cache")},
        "model": {"backbone": {"type": "SpUNet14A", "base_channels": 8, "channels": [8, 16, 16, 16, 16, 16, 16, 16]},
                  "mask_warmup_steps": 2},
        "windows": {"max_voxels": 3000, "samples_per_scene": 2},
        "trainer": {"max_steps": 4, "batch_size": 1, "log_every": 2, "checkpoint_every": 2},
        "out_dir": str(tmp_path / "run"),
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    assert cli_main(["train", str(path), "--threads", "1", "--export", str(tmp_path / "half.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "held out ['sofa', 'bookshelf', 'desk', 'toilet']" in out and "| base mIoU |" in out

    ckpt = load_checkpoint(tmp_path / "run" / "last.safetensors")
    assert ckpt.step == 4 and ckpt.config["split"] == "sim_b15n4" and "sofa" not in ckpt.vocabulary
    assert read_metadata(tmp_path / "half.safetensors")["step"] == 4
    scenes = sorted(p.name for p in (tmp_path / "cache").iterdir() if p.name != "fused")
    assert scenes == ["sim_000004_f4_160x120", "sim_000009_f4_160x120"]  # training, then validation
    assert all((tmp_path / "cache" / p / COMPLETE_MARKER).exists() for p in scenes)
    assert len(list((tmp_path / "cache" / "fused").glob("*.npz"))) == 1
    report = json.loads((tmp_path / "run" / "eval" / "report.json").read_text())
    assert report["split"] == "sim_b15n4" and {"base_miou", "novel_miou", "hiou"} <= set(report)

    assert cli_main(["evaluate", str(path), str(tmp_path / "half.safetensors"), "--validation",
                     "--out", str(tmp_path / "ev")]) == 0
    again = json.loads((tmp_path / "ev" / "report.json").read_text())
    a, b = np.array(again["confusion"]), np.array(report["confusion"])
    assert a.sum() == b.sum() and np.abs(a - b).sum() <= 0.02 * b.sum()  # float16 export: nearly the same labels
