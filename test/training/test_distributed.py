"""The trainer under torchrun: two CPU processes (gloo) train one model with DDP; rank 0 alone writes outputs."""
import json
import os
import subprocess
import sys
import textwrap

import torch

from ov3dseg_core.training.checkpoint import load_checkpoint

SCRIPT = textwrap.dedent('''
    import json
    import sys
    import torch
    from torch import nn
    from ov3dseg_core.training.trainer import Trainer, TrainerConfig

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(2, 2)

        def training_losses(self, batch, step):
            loss = nn.functional.cross_entropy(self.net(batch["x"]), batch["y"])
            return {"loss": loss}

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, generator=g)
    data = [(x[i], (x[i, 0] > 0).long()) for i in range(64)]
    collate = lambda items: {"x": torch.stack([a for a, _ in items]), "y": torch.stack([b for _, b in items])}
    torch.manual_seed(0)
    trainer = Trainer(Tiny(), data, collate, TrainerConfig(max_steps=30, batch_size=8, lr=0.1, warmup_steps=1,
                      log_every=10, checkpoint_every=100), sys.argv[1], {"m": 1}, ["a", "b"])
    result = trainer.fit()
    losses = [row["loss"] for row in result.history]
    with open(f"{sys.argv[2]}.rank{trainer.rank}", "w") as f:
        weights = {k: v.tolist() for k, v in trainer.model.state_dict().items()}
        json.dump({"world": trainer.world, "step": result.step, "losses": losses, "weights": weights}, f)
''')


def test_two_process_ddp_training(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", "29517", str(script), str(out), str(tmp_path / "result")],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    ranks = [json.loads((tmp_path / f"result.rank{r}").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 and r["step"] == 30 for r in ranks)
    losses = ranks[0]["losses"]  # each rank's own shard of the batches; rank 0 alone writes the CSV log
    assert len(ranks[1]["losses"]) == len(losses) == 3 and losses[-1] < losses[0]
    assert ranks[0]["losses"] != ranks[1]["losses"]  # each rank trained on its own batches ...
    assert ranks[0]["weights"] == ranks[1]["weights"]  # ... and DDP's gradient averaging kept the weights equal
    ckpt = load_checkpoint(out / "last.safetensors")
    assert ckpt.step == 30 and set(ckpt.state_dict) == {"net.weight", "net.bias"}
    assert (out / "train_log.csv").exists() and torch.isfinite(ckpt.state_dict["net.weight"]).all()
