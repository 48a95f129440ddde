"""The "standard" training augmentation, applied to whole normalized batches on their own device.

Data stays on the GPU as one tensor (see TensorData), so augmentation is done there too, with a
single gather per batch instead of per-image torchvision transforms in DataLoader workers.
"""
from __future__ import annotations

import torch

from .base import DatasetInfo


def augment_params(info: DatasetInfo, channels: int, height: int, width: int) -> tuple[int, bool]:
    """(padding in pixels, horizontal flip?) for images of this kind.

    Colour images: the usual CIFAR recipe, random crop after 4 px padding plus horizontal flip;
    images under 32 px get padding scaled to about 1/8 of their side. Grayscale images (MNIST-like):
    random translation by up to 2 px (about 1/14 of the side under 28 px, at least 1) and no flip,
    since digits and letters are not mirror-symmetric. A dataset can override both through
    ``info.extra["augment_pad"]`` and ``info.extra["augment_flip"]``.
    """
    side = min(height, width)
    if channels == 1:
        pad, flip = (2 if side >= 28 else max(1, round(side / 14))), False
    else:
        pad, flip = (4 if side >= 32 else max(1, round(side / 8))), True
    pad = int(info.extra.get("augment_pad", pad))
    flip = bool(info.extra.get("augment_flip", flip))
    return pad, flip


def augment_batch(
    x: torch.Tensor, info: DatasetInfo, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Randomly crop (after padding) and, for colour images, flip each sample of a normalized NCHW batch.

    Returns a new tensor of the same shape, dtype and device. Random numbers come from ``generator``
    when given (on its own device, then moved), so a seeded run is reproducible.
    """
    if x.ndim != 4:
        raise ValueError(f"augment_batch expects an NCHW batch, got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    pad, flip = augment_params(info, c, h, w)
    if n == 0 or (pad == 0 and not flip):
        return x.clone()
    device = x.device
    rand_device = generator.device if generator is not None else device

    # Pad with the normalized value of a black (raw 0) pixel, which is what zero padding before
    # normalization (torchvision's RandomCrop on raw images) gives; padding with 0 here would mean
    # the mean colour, a grey frame around MNIST digits.
    mean = torch.tensor(info.mean, dtype=torch.float32)
    std = torch.tensor(info.std, dtype=torch.float32)
    fill = (-mean / std).to(device=device, dtype=x.dtype).view(1, -1, 1, 1)
    padded = fill.expand(n, c, h + 2 * pad, w + 2 * pad).clone()
    padded[:, :, pad : pad + h, pad : pad + w] = x

    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator, device=rand_device).to(device)
    rows = offsets[0, :, None] + torch.arange(h, device=device)  # (n, h)
    cols = torch.arange(w, device=device).expand(n, w)
    if flip:
        mirrored = torch.rand(n, generator=generator, device=rand_device).to(device) < 0.5
        cols = torch.where(mirrored[:, None], (w - 1) - cols, cols)
    cols = offsets[1, :, None] + cols  # (n, w)

    # one gather: out[i, ch, r, q] = padded[i, ch, rows[i, r], cols[i, q]]
    batch_idx = torch.arange(n, device=device).view(n, 1, 1, 1)
    chan_idx = torch.arange(c, device=device).view(1, c, 1, 1)
    return padded[batch_idx, chan_idx, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]
