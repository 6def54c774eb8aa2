"""Starting an XMask3D training from weights (``ov3dseg train CONFIG --init``): converted released weights fill
their modules under the conversion's architecture config, an ov3dseg checkpoint fills the whole model, anything
else is refused."""
from __future__ import annotations

import pytest
import torch

from ov3dseg_core.cli import main as cli_main
from ov3dseg_core.config import load_yaml
from ov3dseg_core.models.backbones.convert import ConversionReport, ConvertedWeights, save_converted
from ov3dseg_core.models.xmask3d import build_xmask3d
from ov3dseg_core.safetensors_file import CheckpointError
from ov3dseg_core.training.checkpoint import Checkpoint, save_checkpoint
from ov3dseg_core.training.xmask3d import checkpoint_config, initial_xmask3d, load_train_config

CONFIG = load_yaml("xmask3d_tiny")["model"]


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(3)
    return build_xmask3d(CONFIG)


def test_converted_weights_fill_their_modules_under_the_conversions_config(source, tmp_path):
    backbone = {k: v for k, v in source.state_dict().items() if k.startswith("backbone.")}
    report = ConversionReport("xmask3d", "b15n4.pth.tar", {"captioner": {"time_condition": False}})
    path = save_converted(tmp_path / "converted.safetensors", ConvertedWeights(backbone, report))
    torch.manual_seed(4)
    model = initial_xmask3d(CONFIG, path)
    assert model.cfg.captioner.time_condition is False  # merged one level deep: the rest of captioner stays
    assert model.cfg.captioner.condition == CONFIG["captioner"]["condition"]
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in backbone.items())
    assert not torch.equal(state["proj_3d.weight"], source.state_dict()["proj_3d.weight"])  # not converted


def test_an_ov3dseg_checkpoint_fills_the_whole_model(source, tmp_path):
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, Checkpoint(source.checkpoint_state_dict(),
                                     checkpoint_config(source, load_train_config("xmask3d_tiny")), source.base_classes))
    torch.manual_seed(5)
    model = initial_xmask3d(CONFIG, path)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in source.state_dict().items())


def test_other_files_are_refused(tmp_path, capsys):
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"not a weights file")
    with pytest.raises(CheckpointError, match="neither converted weights .* nor an ov3dseg checkpoint"):
        initial_xmask3d(CONFIG, other)
    assert cli_main(["train", "xmask3d_tiny", "--init", str(other), "--out", str(tmp_path / "out")]) == 2
    assert "--init" in capsys.readouterr().err
    assert cli_main(["train", "ov3d_default", "--init", str(other), "--out", str(tmp_path / "out")]) == 2
    assert "--init is for XMask3D configs" in capsys.readouterr().err
