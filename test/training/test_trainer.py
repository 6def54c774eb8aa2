"""The generic trainer: optimisation, schedule, checkpoints with embedded config/vocabulary, resume."""
import csv

import pytest
import torch
from torch import nn

from ov3dseg_core.training.checkpoint import CheckpointError, load_checkpoint, read_metadata
from ov3dseg_core.training.trainer import Trainer, TrainerConfig, warmup_cosine


class TinyClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(2, 3)

    def training_losses(self, batch, step):
        ce = nn.functional.cross_entropy(self.net(batch["x"]), batch["y"])
        return {"loss": ce, "ce": ce}


def _dataset(n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 2, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    return [(x[i], y[i]) for i in range(n)]


def _collate(items):
    return {"x": torch.stack([i[0] for i in items]), "y": torch.stack([i[1] for i in items]),
            "batch_size": len(items)}


def _trainer(tmp_path, steps, **kw):
    cfg = TrainerConfig(max_steps=steps, batch_size=16, lr=0.05, warmup_steps=5, log_every=5,
                        checkpoint_every=10, **kw)
    torch.manual_seed(0)
    return Trainer(TinyClassifier(), _dataset(), _collate, cfg, tmp_path, {"model": "tiny"}, ["a", "b", "c"])


def test_loss_decreases_and_logs(tmp_path):
    result = _trainer(tmp_path, 60, grad_accum_steps=2).fit()
    assert result.step == 60
    first, last = result.history[0]["loss"], result.history[-1]["loss"]
    assert last < 0.5 * first
    rows = list(csv.DictReader(open(tmp_path / "train_log.csv")))
    assert [int(r["step"]) for r in rows] == list(range(5, 61, 5))


def test_checkpoint_embeds_config_and_vocabulary(tmp_path):
    result = _trainer(tmp_path, 10).fit()
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt.config == {"model": "tiny"} and ckpt.vocabulary == ["a", "b", "c"] and ckpt.step == 10
    assert set(ckpt.state_dict) == {"net.weight", "net.bias"}


def test_resume_continues_where_it_stopped(tmp_path):
    _trainer(tmp_path, 10).fit()
    resumed = _trainer(tmp_path, 20)
    assert resumed.resume() and resumed.step == 10
    assert resumed.scheduler.last_epoch == 10  # the schedule continues, not restarts at warm-up
    result = resumed.fit(resume=False)
    straight = _trainer(tmp_path / "straight", 20).fit()
    assert [r["step"] for r in result.history] == [15, 20]
    assert result.history[-1]["lr"] == pytest.approx(straight.history[-1]["lr"])
    assert load_checkpoint(result.checkpoint).step == 20


def test_the_log_continues_a_resumed_run_and_restarts_with_a_new_one(tmp_path):
    def logged():
        return [int(r["step"]) for r in csv.DictReader(open(tmp_path / "train_log.csv"))]

    _trainer(tmp_path, 20).fit()
    assert logged() == [5, 10, 15, 20]
    resumed = _trainer(tmp_path, 30)
    resumed.resume()
    resumed.step = 10  # as if stopped after the checkpoint at 10: the rows logged after it are dropped
    resumed.fit(resume=False)
    assert logged() == [5, 10, 15, 20, 25, 30]
    _trainer(tmp_path, 10).fit(resume=False)  # a new run into the same folder
    assert logged() == [5, 10]


def test_corrupt_or_foreign_checkpoint_is_rejected(tmp_path):
    path = _trainer(tmp_path, 5).fit().checkpoint
    data = bytearray(path.read_bytes())
    (tmp_path / "trunc.safetensors").write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "trunc.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        read_metadata(tmp_path / "junk.safetensors")
    with pytest.raises(CheckpointError, match="does not exist"):
        read_metadata(tmp_path / "missing.safetensors")


def test_warmup_cosine_schedule():
    cfg = TrainerConfig(max_steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert warmup_cosine(0, cfg) == pytest.approx(0.1)
    assert warmup_cosine(9, cfg) == pytest.approx(1.0)
    assert warmup_cosine(10, cfg) == pytest.approx(1.0)
    assert warmup_cosine(55, cfg) == pytest.approx(0.55)
    assert warmup_cosine(100, cfg) == pytest.approx(0.1)
