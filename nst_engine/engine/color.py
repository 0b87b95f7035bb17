"""Colour preservation (Gatys, Bethge, Hertzmann, Shechtman 2016, "Preserving colour ...").

* ``histogram``: recolour the style image so its RGB mean and covariance match the
  content's, then transfer as usual.
* ``luminance``: transfer on luminance only, then put the content's chrominance back.

The modes (``none`` plus the two above) are ``nst_engine.engine.choices.ColorMode``.
"""

from __future__ import annotations

import torch

# RGB -> YIQ (NTSC); rows give Y, I, Q.
_RGB_TO_YIQ = torch.tensor(
    [[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]]
)


def rgb_to_yiq(image: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", _RGB_TO_YIQ.to(image), image)


def yiq_to_rgb(image: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(_RGB_TO_YIQ).to(image), image)


def luminance(image: torch.Tensor) -> torch.Tensor:
    """Y channel repeated three times, so the network sees a grey RGB image."""
    return rgb_to_yiq(image)[:, :1].expand(-1, 3, -1, -1).contiguous()


def match_luminance(style_luma: torch.Tensor, content_luma: torch.Tensor) -> torch.Tensor:
    """Shift and scale the style luminance to the content's mean and std (paper, eq. 1 of that note)."""
    s_mean, s_std = style_luma.mean(), style_luma.std().clamp_min(1e-6)
    return (style_luma - s_mean) * (content_luma.std() / s_std) + content_luma.mean()


def combine_luminance(result: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Y from the stylized luminance image, I and Q from the content image."""
    yiq = rgb_to_yiq(content)
    yiq[:, :1] = rgb_to_yiq(result)[:, :1]
    return yiq_to_rgb(yiq).clamp(0, 1)


def match_histogram(style: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Linear map x' = A x + b giving the style pixels the content's mean and covariance."""

    def stats(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = img.squeeze(0).flatten(1).double()  # (3, M)
        mean = pixels.mean(1, keepdim=True)
        centred = pixels - mean
        cov = centred @ centred.T / pixels.shape[1] + 1e-5 * torch.eye(3, dtype=pixels.dtype)
        return mean, cov

    def sqrtm(m: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        vals, vecs = torch.linalg.eigh(m)
        vals = vals.clamp_min(1e-10)
        return vecs @ torch.diag(vals.rsqrt() if inverse else vals.sqrt()) @ vecs.T

    s_mean, s_cov = stats(style)
    c_mean, c_cov = stats(content)
    transform = sqrtm(c_cov) @ sqrtm(s_cov, inverse=True)
    pixels = style.squeeze(0).flatten(1).double()
    mapped = transform @ (pixels - s_mean) + c_mean
    return mapped.reshape_as(style.squeeze(0)).unsqueeze(0).to(style.dtype).clamp(0, 1)
