"""Augmented views of a preprocessed image: TPT's test-time views and CoOp's optional training copies.

Random resized crops (torchvision's sampling rule, drawn from a local
``torch.Generator``) and horizontal flips, on the normalised tensor: cropping and
resizing commute with the per-channel normalisation.
"""
from __future__ import annotations

import math

import torch


def augment_views(pixels: torch.Tensor, n: int, gen: torch.Generator, *, scale: tuple[float, float] = (0.08, 1.0),
                  ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = True,
                  keep_original: bool = True) -> torch.Tensor:
    """``n`` random resized crops (torchvision's sampling rule, drawn from ``gen``) of a preprocessed
    image ``pixels`` (3, H, W), each resized back to H x W and flipped with probability 1/2 when
    ``flip``; with ``keep_original`` the image itself comes first: (n + 1, 3, H, W).

    Cropping and resizing commute with the per-channel normalisation, so augmenting the
    normalised tensor equals augmenting the image and then normalising.
    """
    from torchvision.transforms.functional import InterpolationMode, resized_crop

    if pixels.dim() != 3:
        raise ValueError(f"pixels must be one (3, H, W) image, got shape {tuple(pixels.shape)}")
    _, h, w = pixels.shape
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    out = [pixels] if keep_original else []
    for _ in range(n):
        # six uniform draws per view, the first decides the flip (a fixed count: seeded views never change)
        flip_draw = torch.rand(6, generator=gen)[0].item()
        box = None
        for attempt in range(10):  # torchvision's RandomResizedCrop.get_params, on our generator
            target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(1, generator=gen).item())
            aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * torch.rand(1, generator=gen).item())
            cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
                left = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
                box = (top, left, ch, cw)
                break
        if box is None:  # fall back to the centre crop
            box = ((h - min(h, w)) // 2, (w - min(h, w)) // 2, min(h, w), min(h, w))
        view = resized_crop(pixels, *box, [h, w], interpolation=InterpolationMode.BICUBIC, antialias=True)
        if flip and flip_draw < 0.5:
            view = view.flip(-1)
        out.append(view)
    return torch.stack(out)


__all__ = ["augment_views"]
