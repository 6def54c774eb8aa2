"""Test helpers: released-checkpoint fixtures from the key -> shape lists in test/data_files/checkpoint_keys, random
voxel scenes, and brute-force NumPy references of the source libraries' layers (MinkowskiEngine convolutions over explicit kernel
offsets, MinkowskiEngine's MinkUNet forward, Mosaic3D's 1x1 matmul), written from the upstream semantics (see
ov3dseg_core/models/backbones/layouts.py), independently of the converters under test."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from ov3dseg_core.models.backbones.spunet import spconv

KEY_LISTS = Path(__file__).resolve().parents[1] / "data_files" / "checkpoint_keys"
BN_EPS = 1e-5  # MinkowskiBatchNorm's default


def expand(pattern: str) -> list[str]:
    """Keys of a pattern with {a..b} integer ranges and {x,y} alternatives (not nested), in order."""
    brace = re.search(r"\{([^{}]*)\}", pattern)
    if brace is None:
        return [pattern]
    span = re.fullmatch(r"(\d+)\.\.(\d+)", brace.group(1))
    options = [str(i) for i in range(int(span[1]), int(span[2]) + 1)] if span else brace.group(1).split(",")
    return [key for option in options for key in expand(pattern[: brace.start()] + option + pattern[brace.end():])]


def key_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """{key: shape} of test/data_files/checkpoint_keys/<name>.txt (lines "KEY_PATTERN SHAPE", "-" = scalar)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for line in (KEY_LISTS / f"{name}.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        pattern, shape = line.split()
        for key in expand(pattern):
            assert key not in shapes, f"{name}: {key} listed twice"
            shapes[key] = () if shape == "-" else tuple(int(n) for n in shape.split(","))
    return shapes


def random_state(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Random tensors of ``shapes``: BatchNorm-like statistics and affine terms near their usual values, weights
    scaled by 1/sqrt(fan-in) (MinkowskiEngine ``kernel`` (..., C_in, C_out): fan-in = numel / C_out; other
    weights (C_out, ...): numel / C_out), integer counters for ``num_batches_tracked``."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(100)
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(shape, generator=gen)
        elif len(shape) <= 1:
            base = 1.0 if key.endswith("weight") and ("bn" in key or "norm" in key) else 0.0
            state[key] = base + 0.1 * torch.randn(shape, generator=gen)
        else:
            out_channels = shape[-1] if key.endswith("kernel") else shape[0]
            state[key] = torch.randn(shape, generator=gen) / (np.prod(shape) / out_channels) ** 0.5
    return state


# ------------------------------------------------------------------------------------------- MinkowskiEngine
def minkowski_offsets(size: int, tensor_stride: int) -> np.ndarray:
    """(size^3, 3) offsets of ME's cubic kernel in kernel-index order: axis 0 fastest (k = i0 + size i1 +
    size^2 i2), centred for odd sizes (i - size // 2), from 0 for even sizes, times the input tensor stride."""
    index = np.arange(size**3)
    per_axis = np.stack([index % size, index // size % size, index // size**2], axis=1)
    return (per_axis - (size // 2 if size % 2 else 0)) * tensor_stride


def minkowski_conv(coords: np.ndarray, feats: np.ndarray, kernel: np.ndarray, size: int, tensor_stride: int,
                   stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """ME convolution: output coordinates are the input's (stride 1) or the inputs floored to the output tensor
    stride; out[o] = sum_k feats[o + offset_k] @ kernel[k] over the offsets whose input exists.
    coords (N, 3) at ``tensor_stride``; kernel (size^3, C_in, C_out) or (C_in, C_out). Returns (coords, feats)."""
    kernel = kernel.reshape(-1, *kernel.shape[-2:])
    out_stride = tensor_stride * stride
    out_coords = coords if stride == 1 else np.unique(coords // out_stride * out_stride, axis=0)
    index = {tuple(c): i for i, c in enumerate(coords)}
    out = np.zeros((len(out_coords), kernel.shape[-1]))
    for k, offset in enumerate(minkowski_offsets(size, tensor_stride)):
        pairs = [(o, index[tuple(c + offset)]) for o, c in enumerate(out_coords) if tuple(c + offset) in index]
        if pairs:
            rows, sources = map(list, zip(*pairs))
            out[rows] += feats[sources] @ kernel[k]
    return out_coords, out


def minkowski_conv_transpose(coarse: np.ndarray, feats: np.ndarray, kernel: np.ndarray, fine: np.ndarray,
                             fine_stride: int) -> np.ndarray:
    """ME transposed convolution (kernel 2, stride 2) onto the existing ``fine`` coordinates: the kernel map of the
    fine -> coarse convolution swapped, out[q + offset_k] += feats[q] @ kernel[k] (offsets at the fine stride)."""
    index = {tuple(c): i for i, c in enumerate(fine)}
    out = np.zeros((len(fine), kernel.shape[-1]))
    for k, offset in enumerate(minkowski_offsets(2, fine_stride)):
        pairs = [(index[tuple(c + offset)], q) for q, c in enumerate(coarse) if tuple(c + offset) in index]
        if pairs:
            rows, sources = map(list, zip(*pairs))
            out[rows] += feats[sources] @ kernel[k]
    return out


def reference_minkunet(state: dict[str, torch.Tensor], prefix: str, coords: np.ndarray, feats: np.ndarray
                       ) -> np.ndarray:
    """Eval-mode forward of MinkowskiEngine's MinkUNet (XMask3D mink_unet.py ``MinkUNetBase.forward``) read from
    ME-layout tensors ``state[prefix + ...]``, in float64. coords (N, 3) >= 0; returns (N, C_out) in input order."""
    def tensor(name: str) -> np.ndarray:
        return state[prefix + name].double().numpy()

    def norm(name: str, x: np.ndarray) -> np.ndarray:
        scale = tensor(f"{name}.bn.weight") / np.sqrt(tensor(f"{name}.bn.running_var") + BN_EPS)
        return (x - tensor(f"{name}.bn.running_mean")) * scale + tensor(f"{name}.bn.bias")

    def relu(x: np.ndarray) -> np.ndarray:
        return np.maximum(x, 0.0)

    def blocks(name: str, c: np.ndarray, s: int, x: np.ndarray) -> np.ndarray:
        i = 0
        while f"{prefix}{name}.{i}.conv1.kernel" in state:
            block = f"{name}.{i}"
            y = relu(norm(f"{block}.norm1", minkowski_conv(c, x, tensor(f"{block}.conv1.kernel"), 3, s)[1]))
            y = norm(f"{block}.norm2", minkowski_conv(c, y, tensor(f"{block}.conv2.kernel"), 3, s)[1])
            shortcut = f"{block}.downsample"
            residual = x if prefix + shortcut + ".0.kernel" not in state else \
                norm(f"{shortcut}.1", x @ tensor(f"{shortcut}.0.kernel"))
            x, i = relu(y + residual), i + 1
        return x

    x = relu(norm("bn0", minkowski_conv(coords, feats, tensor("conv0p1s1.kernel"), 5, 1)[1]))
    c, s, skips = coords, 1, []
    for stage in range(1, 5):
        skips.append((c, s, x))
        c, x = minkowski_conv(c, x, tensor(f"conv{stage}p{s}s2.kernel"), 2, s, stride=2)
        s *= 2
        x = blocks(f"block{stage}", c, s, relu(norm(f"bn{stage}", x)))
    for stage in range(4, 8):
        fine, fine_stride, skip = skips.pop()
        x = minkowski_conv_transpose(c, x, tensor(f"convtr{stage}p{s}s2.kernel"), fine, fine_stride)
        c, s = fine, fine_stride
        x = blocks(f"block{stage + 1}", c, s, np.concatenate([relu(norm(f"bntr{stage}", x)), skip], axis=1))
    return x @ tensor("final.kernel")


# ------------------------------------------------------------------------------------------- Mosaic3D
def mosaic3d_pointwise(feats: np.ndarray, weight: torch.Tensor, bias: torch.Tensor | None = None) -> np.ndarray:
    """Mosaic3D's ``Custom1x1Subm3d``: features @ weight.view(C_out, C_in).T (+ bias)."""
    w = weight.double().numpy().reshape(weight.shape[0], weight.shape[-1])
    return feats @ w.T + (0.0 if bias is None else bias.double().numpy())


def scene(seed: int, count: int, extent: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` distinct random voxels (int64 coordinates in [1, extent]) and (count, 3) features."""
    rng = np.random.default_rng(seed)
    cells = rng.choice(extent**3, size=count, replace=False)
    coords = np.stack([cells % extent, cells // extent % extent, cells // extent**2], axis=1) + 1
    return coords.astype(np.int64), rng.standard_normal((count, 3))


def sparse(coords: np.ndarray, feats: np.ndarray) -> spconv.SparseConvTensor:
    """A one-scene spconv tensor of voxels ``coords`` (N, 3) >= 0 with features (N, C) (float32)."""
    indices = torch.cat([torch.zeros(len(coords), 1, dtype=torch.int32), torch.from_numpy(coords).int()], dim=1)
    return spconv.SparseConvTensor(torch.from_numpy(feats).float(), indices, (coords.max(axis=0) + 8).tolist(), 1)


def original_sd_layout(unet: dict[str, torch.Tensor], vae: dict[str, torch.Tensor], unet_config: dict,
                       vae_config: dict) -> dict[str, torch.Tensor]:
    """A diffusers UNet + VAE state dict renamed into the original (CompVis LDM) single-file layout of Stable
    Diffusion 1.x checkpoints: ``model.diffusion_model.*`` (openaimodel: input_blocks / middle_block /
    output_blocks, resnets as in_layers / emb_layers / out_layers / skip_connection) and ``first_stage_model.*``
    (encoder.down.i.block.j, decoder.up numbered from the lowest resolution, attention q/k/v/proj_out as 1x1
    convolutions), written from that layout, independently of diffusers' converter."""
    per = unet_config["layers_per_block"]
    blocks = len(unet_config["block_out_channels"])
    unet_prefix = [("time_embedding.linear_1.", "time_embed.0."), ("time_embedding.linear_2.", "time_embed.2."),
                   ("conv_in.", "input_blocks.0.0."), ("conv_norm_out.", "out.0."), ("conv_out.", "out.2."),
                   ("mid_block.resnets.0.", "middle_block.0."), ("mid_block.attentions.0.", "middle_block.1."),
                   ("mid_block.resnets.1.", "middle_block.2.")]
    for b in range(blocks):
        for j in range(per):
            unet_prefix += [(f"down_blocks.{b}.resnets.{j}.", f"input_blocks.{1 + b * (per + 1) + j}.0."),
                            (f"down_blocks.{b}.attentions.{j}.", f"input_blocks.{1 + b * (per + 1) + j}.1.")]
        unet_prefix.append((f"down_blocks.{b}.downsamplers.0.conv.", f"input_blocks.{(b + 1) * (per + 1)}.0.op."))
        has_attention = unet_config["up_block_types"][b].startswith("CrossAttn")
        for j in range(per + 1):
            unet_prefix += [(f"up_blocks.{b}.resnets.{j}.", f"output_blocks.{b * (per + 1) + j}.0."),
                            (f"up_blocks.{b}.attentions.{j}.", f"output_blocks.{b * (per + 1) + j}.1.")]
        unet_prefix.append((f"up_blocks.{b}.upsamplers.0.", f"output_blocks.{b * (per + 1) + per}."
                            f"{2 if has_attention else 1}."))
    resnet_parts = [("norm1.", "in_layers.0."), ("conv1.", "in_layers.2."), ("time_emb_proj.", "emb_layers.1."),
                    ("norm2.", "out_layers.0."), ("conv2.", "out_layers.3."), ("conv_shortcut.", "skip_connection.")]
    out = {}
    for key, value in unet.items():
        old, new = next((o, n) for o, n in unet_prefix if key.startswith(o))
        rest = key[len(old):]
        if ".resnets." in old or old.startswith(("mid_block.resnets",)):
            rest = next((n + rest[len(o):] for o, n in resnet_parts if rest.startswith(o)), rest)
        out["model.diffusion_model." + new + rest] = value

    ups = len(vae_config["up_block_types"])
    vae_prefix = [("encoder.conv_norm_out.", "encoder.norm_out."), ("decoder.conv_norm_out.", "decoder.norm_out.")]
    for part in ("encoder", "decoder"):
        vae_prefix += [(f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1."),
                       (f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2."),
                       (f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.")]
    for i in range(len(vae_config["down_block_types"])):
        vae_prefix += [(f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block."),
                       (f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample.")]
    for i in range(ups):
        vae_prefix += [(f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{ups - 1 - i}.block."),
                       (f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{ups - 1 - i}.upsample.")]
    attention_parts = [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
                       ("to_out.0.", "proj_out.")]
    for key, value in vae.items():
        old, new = next(((o, n) for o, n in vae_prefix if key.startswith(o)), ("", ""))
        rest = key[len(old):].replace("conv_shortcut.", "nin_shortcut.")
        if old.endswith("attentions.0."):
            rest = next(n + rest[len(o):] for o, n in attention_parts if rest.startswith(o))
            if rest.endswith("weight") and value.ndim == 2:
                value = value[:, :, None, None]  # Linear -> 1x1 convolution
        out["first_stage_model." + new + rest] = value
    return out
