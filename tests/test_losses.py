"""The paper's loss formulas against hand-computed tensors."""

from __future__ import annotations

import torch

from nst_engine.engine.losses import (
    ContentLoss,
    StyleLoss,
    StyleTargets,
    StyleTransferObjective,
    TotalVariationLoss,
    gram_matrix,
)
from nst_engine.engine.vgg import VGG19Features
from nst_engine.engine.weights import random_weights


def test_content_loss_is_half_sum_of_squares() -> None:
    target = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    features = torch.tensor([[[[1.0, 0.0], [5.0, 4.0]]]])
    # differences 0, 2, -2, 0 -> 0.5 * (4 + 4) = 4
    assert ContentLoss(target)(features).item() == 4.0


def test_gram_matrix_normalised_by_channels_and_positions() -> None:
    features = torch.arange(12, dtype=torch.float32).reshape(1, 2, 2, 3)  # N=2, M=6
    flat = features.reshape(2, 6)
    expected = flat @ flat.T / (2 * 6)
    assert torch.allclose(gram_matrix(features), expected)
    # channels_last input gives the same Gram matrix
    assert torch.allclose(gram_matrix(features.contiguous(memory_format=torch.channels_last)), expected)


def test_style_loss_matches_paper_formula() -> None:
    gen = torch.Generator().manual_seed(0)
    features = torch.rand(1, 3, 4, 5, generator=gen)
    style = torch.rand(1, 3, 4, 5, generator=gen)
    n, m = 3, 20
    f, s = features.reshape(n, m), style.reshape(n, m)
    g, a = f @ f.T, s @ s.T  # un-normalised Gram matrices of the paper
    expected = ((g - a) ** 2).sum() / (4 * n**2 * m**2)
    assert torch.allclose(StyleLoss(gram_matrix(style))(features), expected, rtol=1e-5)


def test_total_variation() -> None:
    image = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]])
    # vertical: (2-0)^2 + (4-1)^2 = 13; horizontal: (1-0)^2 + (4-2)^2 = 5
    assert TotalVariationLoss()(image).item() == 18.0


def test_blended_targets_give_same_gradient_as_summed_losses() -> None:
    gen = torch.Generator().manual_seed(1)
    a1, a2 = torch.rand(4, 4, generator=gen), torch.rand(4, 4, generator=gen)
    features = torch.rand(1, 4, 3, 3, generator=gen, requires_grad=True)
    w1, w2 = 0.25, 0.75
    summed = w1 * StyleLoss(a1)(features) + w2 * StyleLoss(a2)(features)
    (grad_sum,) = torch.autograd.grad(summed, features)
    blended = StyleTargets.blend([{"l": a1}, {"l": a2}], [w1, w2])
    (grad_blend,) = torch.autograd.grad(StyleLoss(blended.grams["l"])(features), features)
    assert torch.allclose(grad_sum, grad_blend, atol=1e-6)


def test_objective_gradient_check_in_float64() -> None:
    weights = random_weights(widths=(2, 3, 3, 4, 4), seed=3)
    net = VGG19Features(weights.convs, weights.preprocessing, pooling="avg", last_layer="conv3_1").double()
    gen = torch.Generator().manual_seed(2)
    content = torch.rand(1, 3, 8, 8, generator=gen, dtype=torch.float64)
    style = torch.rand(1, 3, 8, 8, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        content_targets = net(content, ["conv2_2"])
        grams = {k: gram_matrix(v) for k, v in net(style, ["conv1_1", "conv2_1", "conv3_1"]).items()}
    objective = StyleTransferObjective(
        net,
        content_targets,
        StyleTargets(grams),
        {"conv2_2": 1.0},
        {k: 1 / 3 for k in grams},
        content_weight=1.0,
        style_weight=10.0,
        tv_weight=0.1,
    )
    image = torch.rand(1, 3, 8, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: objective(x).total, (image,), eps=1e-6, atol=1e-5)


def test_a_stacked_objective_keeps_each_images_terms() -> None:
    """Stacked beside one that uses the TV prior, an image without it reports no TV, and
    each image's terms are its own objective's."""
    weights = random_weights(widths=(2, 3, 3, 4, 4), seed=3)
    net = VGG19Features(weights.convs, weights.preprocessing, pooling="avg", last_layer="conv3_1").double()
    gen = torch.Generator().manual_seed(4)
    images = torch.rand(2, 3, 8, 8, generator=gen, dtype=torch.float64)

    def objective(tv: float, ratio: float) -> StyleTransferObjective:
        with torch.no_grad():
            content = net(torch.rand(1, 3, 8, 8, generator=gen, dtype=torch.float64), ["conv2_2"])
            style = {k: gram_matrix(v) for k, v in net(images[:1] * 0.5, ["conv1_1", "conv3_1"]).items()}
        return StyleTransferObjective(
            net, content, StyleTargets(style), {"conv2_2": 1.0}, {k: 0.5 for k in style}, 1.0, ratio, tv
        )

    parts = [objective(0.1, 10.0), objective(0.0, 100.0)]
    stacked = StyleTransferObjective.stack(parts)(images).table
    for i, part in enumerate(parts):
        assert torch.allclose(stacked[i], part(images[i : i + 1]).table[0], rtol=1e-12)
    assert stacked[1, 3] == 0.0 and stacked[0, 3] > 0
