"""The trainer under torchrun: two CPU processes (gloo) train one model with DDP; rank 0 alone writes outputs."""
import os
import subprocess
import sys
import textwrap

import torch

from ov3dseg_core.training.checkpoint import load_checkpoint

SCRIPT = textwrap.dedent('''
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
    print(f"rank {trainer.rank} of {trainer.world} step {result.step} first {result.history[0]['loss']:.3f} "
          f"last {result.history[-1]['loss']:.3f}" if trainer.rank == 0 else f"rank {trainer.rank} of {trainer.world}")
''')


def test_two_process_ddp_training(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", "29517", str(script), str(out)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "rank 1 of 2" in proc.stdout
    line = next(l for l in proc.stdout.splitlines() if l.startswith("rank 0 of 2"))
    first, last = float(line.split("first ")[1].split()[0]), float(line.split("last ")[1])
    assert last < first
    ckpt = load_checkpoint(out / "last.safetensors")
    assert ckpt.step == 30 and set(ckpt.state_dict) == {"net.weight", "net.bias"}
    assert (out / "train_log.csv").exists() and torch.isfinite(ckpt.state_dict["net.weight"]).all()
