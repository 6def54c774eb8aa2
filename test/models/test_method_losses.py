"""SAS and GeoGuide losses: Eq. 10 superpoint distillation, the TESD bank (Eq. 11) and CE (Eqs. 12-13), USD
weights, IMR and IIRC, on tiny hand-made inputs."""
import torch
import torch.nn.functional as F

from ov3dseg_core.models.methods.geoguide.model import GeoGuide, GeoGuideConfig
from ov3dseg_core.models.methods.losses import (
    FeatureBank, gram_mse, self_distillation, superpoint_distillation, vocabulary_distillation,
)
from ov3dseg_core.models.pooling import scatter_mean

TINY = {"type": "SpUNet14A", "base_channels": 8, "channels": [8, 8, 8, 8, 8, 8, 8, 8]}


def test_eq10_superpoint_distillation():
    f3d = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), dim=-1)
    superpoint = torch.tensor([0, 0, 1])
    target_sp = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    loss_p, loss_sp = superpoint_distillation(f3d, target_sp, superpoint, torch.tensor([True, True]))
    c = 2 ** -0.5
    assert torch.isclose(loss_p, torch.tensor(((1 - c) + (1 - c) + 1.0) / 3))             # 1 - cos(F_SP^2D, F^3D)
    assert torch.isclose(loss_sp, torch.tensor(((1 - 1.0) + (1 - 0.0)) / 2))              # pooled (0.5, 0.5) vs (1, 1)
    loss_p, loss_sp = superpoint_distillation(f3d, target_sp, superpoint, torch.tensor([True, False]))
    assert torch.isclose(loss_p, torch.tensor(1 - c)) and torch.isclose(loss_sp, torch.tensor(0.0), atol=1e-6)


def test_vocabulary_distillation_soft_labels():
    text = torch.eye(3)
    f3d = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), dim=-1)
    superpoint = torch.tensor([0, 0, 2])
    target_sp = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    has_sp = torch.tensor([True, False, True])
    tau = 0.5
    kl_p, kl_sp = vocabulary_distillation(f3d, target_sp, superpoint, has_sp, text, tau)
    soft = torch.softmax(torch.tensor([[1.0, 0.0, 0.0], [0.0, 2 ** -0.5, 2 ** -0.5]]) / tau, dim=-1)
    assert torch.isclose(kl_p, F.cross_entropy(f3d / tau, soft[[0, 0, 1]]))
    f_sp = torch.tensor([[2 ** -0.5, 2 ** -0.5, 0.0], [0.0, 0.0, 1.0]])  # superpoint 0: mean of two points
    assert torch.isclose(kl_sp, F.cross_entropy(f_sp / tau, soft))


def test_feature_bank_ema():
    bank = FeatureBank(alpha=0.75)
    first = bank.update(torch.tensor([2, 0]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]), size=4)
    assert torch.equal(first, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))                      # first visit: copied
    second = bank.update(torch.tensor([2]), torch.tensor([[0.0, 1.0]]), size=4)
    assert torch.allclose(second, torch.tensor([[0.75, 0.25]]))                            # alpha F_hat + (1-a) F
    assert torch.allclose(bank.values[0].float(), torch.tensor([0.0, 1.0])) and not bool(bank.seen[1])


def test_tesd_pseudo_labels_and_ce():
    text = torch.eye(3)
    bank = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.1, 0.7], [0.0, 0.6, 0.4]])
    superpoint = torch.tensor([0, 1, 1])
    logits = torch.randn(3, 3)
    logits_sp = torch.randn(2, 3)
    ce_p, ce_sp = self_distillation(logits, logits_sp, bank, superpoint, text)
    assert torch.isclose(ce_p, F.cross_entropy(logits, torch.tensor([0, 2, 1])))
    assert torch.isclose(ce_sp, F.cross_entropy(logits_sp, torch.tensor([0, 2])))  # sp 1: mean (0.1, .35, .55)


def test_gram_mse():
    a = torch.randn(5, 3)
    assert gram_mse(a, 2 * a) < 1e-10
    b = torch.randn(5, 4)
    na, nb = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    assert torch.isclose(gram_mse(a, b), ((na @ na.t() - nb @ nb.t()) ** 2).mean())


def _geoguide(**overrides) -> GeoGuide:
    torch.manual_seed(0)
    cfg = GeoGuideConfig(backbone=TINY, in_channels=4, text_dim=6, hidden=16, **overrides)
    return GeoGuide(cfg, torch.eye(6)[:3])


def test_usd_with_constant_reliability_is_mean_pooling():
    model = _geoguide()
    torch.nn.init.zeros_(model.reliability[-1].weight)  # constant logits: the softmax weights are uniform
    geo, sem = torch.randn(6, 8), F.normalize(torch.randn(6, 6), dim=-1)
    target, has = torch.randn(6, 6), torch.tensor([True, True, False, True, True, True])
    sp = torch.tensor([0, 0, 0, 1, 1, 2])
    usd = model._usd(geo, sem, target, has, sp, 3)
    mean_sp = scatter_mean(F.normalize(target[has], dim=-1), sp[has], 3)
    loss_p, loss_sp = superpoint_distillation(sem, mean_sp, sp, torch.ones(3, dtype=torch.bool))
    assert torch.isclose(usd, loss_p + loss_sp, atol=1e-6)
    plain = _geoguide(learned_reliability=False)  # the "w/o USD" ablation: mean pooling whatever W would say
    assert torch.isclose(plain._usd(geo, sem, target, has, sp, 3), loss_p + loss_sp, atol=1e-6)


def test_usd_weights_follow_reliability():
    model = _geoguide()
    geo, sem = torch.randn(4, 8), F.normalize(torch.randn(4, 6), dim=-1)
    target, has, sp = torch.randn(4, 6), torch.ones(4, dtype=torch.bool), torch.tensor([0, 0, 1, 1])
    model._usd(geo, sem, target, has, sp, 2).backward()
    assert model.reliability[0].weight.grad.abs().sum() > 0  # W is learned through the distillation loss
    assert model.backbone.conv_input[0].weight.grad is None   # the backbone stays frozen


def test_imr_and_iirc_terms():
    model = _geoguide(occlusion=0.0, min_proposal_points=2)
    sem = F.normalize(torch.randn(6, 6), dim=-1).requires_grad_()
    geo = torch.randn(6, 8)
    batch = {"proposal": torch.tensor([0, 0, 0, 1, 1, -1]), "num_proposals": 2, "offset": torch.tensor([6])}
    bce, sim = model._instances(geo, sem, batch)
    queries = F.normalize(model.mask_proj(torch.stack([sem[:3].mean(0), sem[3:5].mean(0)])), dim=-1)
    target = torch.tensor([[1.0, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 0]])
    assert torch.isclose(bce, F.binary_cross_entropy_with_logits(queries @ sem.t(), target))
    assert torch.isclose(sim, gram_mse(torch.stack([geo[:3].mean(0), geo[3:5].mean(0)]),
                                       torch.stack([sem[:3].mean(0), sem[3:5].mean(0)])))
