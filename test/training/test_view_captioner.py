"""The ViT-GPT2-style view captioner plug-in: a tiny randomly initialised VisionEncoderDecoder (ViT + GPT-2, a
word-level tokenizer, a ViT image processor) saved to a temporary folder, selected by a training config through
the REGISTRY, captions views from the local folder alone; a folder that lacks a part is named in the error."""
import re

import numpy as np
import pytest
import torch

from ov3dseg_core.registry import REGISTRY
from ov3dseg_core.training.xmask3d import SceneViewDataset, ViewDataConfig

WORDS = ["<|endoftext|>", "a", "room", "with", "chair", "table", "sofa"]


@pytest.fixture(scope="module")
def captioner_dir(tmp_path_factory):
    from ov3dseg_core import compat
    compat.apply()
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (GPT2Config, PreTrainedTokenizerFast, ViTConfig, ViTImageProcessor,
                              VisionEncoderDecoderConfig, VisionEncoderDecoderModel)

    path = tmp_path_factory.mktemp("vit_gpt2")
    words = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token=WORDS[0]))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=words, bos_token=WORDS[0], eos_token=WORDS[0],
                            pad_token=WORDS[0]).save_pretrained(path)
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(
        ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=32,
                  patch_size=16),
        GPT2Config(vocab_size=len(WORDS), n_embd=16, n_layer=1, n_head=2, n_positions=32, bos_token_id=0,
                   eos_token_id=0))
    config.decoder_start_token_id = config.pad_token_id = config.eos_token_id = 0
    torch.manual_seed(0)
    model = VisionEncoderDecoderModel(config)
    model.generation_config.min_length = 3  # the random decoder would end at once: at least two words
    model.save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def test_one_caption_per_image_from_the_local_folder(captioner_dir, small_scene):
    captioner = REGISTRY.build("view_captioner", {"type": "ViTGPT2Captioner", "path": str(captioner_dir),
                                                  "max_length": 6})
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (120, 160, 3), dtype=np.uint8) for _ in range(3)]
    captions = captioner.caption(images)
    assert len(captions) == 3 and all(isinstance(c, str) and c for c in captions)
    assert set(" ".join(captions).split()) <= set(WORDS[1:])  # the tokenizer's words, special tokens dropped
    # selected by a training config: the dataset's views carry its captions
    views = ViewDataConfig(image_size=[48, 64], max_points=500,
                           captioner={"type": "ViTGPT2Captioner", "path": str(captioner_dir), "max_length": 6})
    sample = SceneViewDataset([small_scene], ["wall", "floor"], views)[0]
    assert sample["caption"] == captioner(small_scene.frames[0].color, [], rng)


def test_missing_parts_are_named(captioner_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        REGISTRY.build("view_captioner", {"type": "ViTGPT2Captioner", "path": str(tmp_path / "nowhere")})
    for name, what in (("preprocessor_config.json", "image processor"), ("tokenizer.json", "tokenizer"),
                       ("model.safetensors", "model weights")):
        partial = tmp_path / name
        partial.mkdir()
        for f in captioner_dir.iterdir():
            if f.name != name:
                (partial / f.name).symlink_to(f)
        with pytest.raises(FileNotFoundError, match=re.escape(f"{partial} lacks the {what}")):
            REGISTRY.build("view_captioner", {"type": "ViTGPT2Captioner", "path": str(partial)})
