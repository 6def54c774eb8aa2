"""``ov3dseg model-info`` for Mosaic3D (a ``method:`` config): the real-size encoder has the released
Mosaic3D-SpUNet34C's 43,685,664 parameters with its 768-d Recap-CLIP head (the shipped config's 384-d MiniLM head
has 384 x 97 fewer), plus the Mask3D-size decoder."""
import json

import yaml

from ov3dseg_core.cli import main as cli_main
from ov3dseg_core.config import load_yaml

RELEASED_ENCODER = 43_685_664
"""Parameters of the released Mosaic3D encoder without PPT's context table (its 768-d output head included)."""


def _counts(capsys, config: str) -> dict[str, int]:
    assert cli_main(["model-info", config, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_real_size_encoder_matches_the_release_and_the_decoder_is_counted(capsys, tmp_path):
    counts = _counts(capsys, "mosaic3d_scannet")
    assert list(counts) == ["encoder", "context_table", "decoder", "temperatures", "total"]
    assert counts["encoder"] == RELEASED_ENCODER - (768 - 384) * 97  # the last layer: 96 channels + bias per output
    assert 6e6 < counts["decoder"] < 8e6  # d_model 256, 6 layers, 100 queries
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
    config = load_yaml("mosaic3d_scannet")
    config["method"]["text_dim"] = 768  # Recap-CLIP's space, as released
    path = tmp_path / "mosaic3d_768.yaml"
    path.write_text(yaml.safe_dump(config))
    assert _counts(capsys, str(path))["encoder"] == RELEASED_ENCODER
    assert cli_main(["model-info", "mosaic3d_tiny"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Mosaic3D (mosaic3d_tiny)") and "decoder" in out
