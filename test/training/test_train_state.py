"""Resume state (``<checkpoint>.train_state.pt``) is read with torch.load(weights_only=True): the trainer's own
state loads, a pickle that would run code does not."""
import pickle

import pytest
import torch

from ov3dseg_core.training.checkpoint import load_train_state, save_train_state, train_state_path


class Payload:
    """Unpickling this would run code (os.system in a real attack)."""

    ran = False

    def __reduce__(self):
        return (Payload._run, ())

    @staticmethod
    def _run():
        Payload.ran = True
        return Payload()


def test_the_trainers_own_state_loads(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "scaler": torch.amp.GradScaler("cpu", enabled=False).state_dict(), "step": 7,
             "torch_rng": torch.get_rng_state()}
    save_train_state(tmp_path / "last.safetensors", state)
    loaded = load_train_state(tmp_path / "last.safetensors")
    assert loaded["step"] == 7 and torch.equal(loaded["torch_rng"], state["torch_rng"])
    optimizer.load_state_dict(loaded["optimizer"])


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    path = train_state_path(tmp_path / "last.safetensors")
    torch.save({"step": 1, "evil": Payload()}, path)
    Payload.ran = False
    with pytest.raises(pickle.UnpicklingError):
        load_train_state(tmp_path / "last.safetensors")
    assert not Payload.ran
