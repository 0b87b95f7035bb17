"""The engine's temporal pieces (Ruder et al. 2016) on synthetic scenes whose true motion is
known: a textured background drifting by a whole-pixel shift and a textured square moving
faster over it, so flow, disocclusions and warps can be checked against the truth."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nst_engine.engine.flow import FrameFlow, consistency, dis_flow, frame_flow
from nst_engine.engine.losses import ContentLoss, _Weighted
from nst_engine.engine.temporal import TemporalLoss, warping_error
from nst_engine.engine.warp import lands_inside, warp

SIZE = 128  # frame side, px
BACKGROUND_STEP = (2, 1)  # (x, y) px a frame the background's content moves by
SQUARE_SIDE = 32
SQUARE_START = (36, 44)  # (x, y) of its top-left corner in frame 0
SQUARE_STEP = (9, 0)
MARGIN = 12  # px kept clear of borders and of the square's edges where "interior" is asked


def texture(height: int, width: int, seed: int, blur: float) -> torch.Tensor:
    """Smooth random colour texture (1, 3, H, W) in [0, 1]: noise blurred by a Gaussian,
    stretched to the full range, so every patch has structure for the flow to follow."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand(1, 3, height, width, generator=gen)
    radius = int(3 * blur)
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1) / blur) ** 2)
    taps = taps / taps.sum()
    smooth = F.conv2d(noise, taps.view(1, 1, 1, -1).expand(3, 1, 1, -1), padding=(0, radius), groups=3)
    smooth = F.conv2d(smooth, taps.view(1, 1, -1, 1).expand(3, 1, -1, 1), padding=(radius, 0), groups=3)
    low, high = smooth.amin(dim=(2, 3), keepdim=True), smooth.amax(dim=(2, 3), keepdim=True)
    return (smooth - low) / (high - low)


@dataclass
class Scene:
    """Frames (1, 3, SIZE, SIZE) and where the square is in each."""

    frames: list[torch.Tensor]
    corners: list[tuple[int, int]]

    def square(self, index: int, grow: int = 0) -> torch.Tensor:
        """(SIZE, SIZE) bool: the square of frame ``index``, grown by ``grow`` px a side."""
        x, y = self.corners[index]
        mask = torch.zeros(SIZE, SIZE, dtype=torch.bool)
        mask[max(y - grow, 0) : y + SQUARE_SIDE + grow, max(x - grow, 0) : x + SQUARE_SIDE + grow] = True
        return mask


def moving_square_scene(count: int = 2) -> Scene:
    background = texture(SIZE + 40, SIZE + 40, seed=1, blur=1.5)
    patch = texture(SQUARE_SIDE, SQUARE_SIDE, seed=2, blur=1.0)
    frames, corners = [], []
    for t in range(count):
        # frame_t(p) = background(p − t·step): the content moves by +step a frame
        ox, oy = 20 - t * BACKGROUND_STEP[0], 20 - t * BACKGROUND_STEP[1]
        frame = background[..., oy : oy + SIZE, ox : ox + SIZE].clone()
        x, y = SQUARE_START[0] + t * SQUARE_STEP[0], SQUARE_START[1] + t * SQUARE_STEP[1]
        frame[..., y : y + SQUARE_SIDE, x : x + SQUARE_SIDE] = patch
        frames.append(frame)
        corners.append((x, y))
    return Scene(frames, corners)


def interior(margin: int = MARGIN) -> torch.Tensor:
    """(SIZE, SIZE) bool: pixels at least ``margin`` from the frame's borders."""
    mask = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    mask[margin:-margin, margin:-margin] = True
    return mask


def disoccluded(scene: Scene) -> torch.Tensor:
    """Frame 1's truly disoccluded pixels: background whose content sat under the square
    in frame 0."""
    x0, y0 = scene.corners[0]
    ys, xs = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    came_from_x, came_from_y = xs - BACKGROUND_STEP[0], ys - BACKGROUND_STEP[1]
    under = (came_from_x >= x0) & (came_from_x < x0 + SQUARE_SIDE)
    under &= (came_from_y >= y0) & (came_from_y < y0 + SQUARE_SIDE)
    return under & ~scene.square(1)


@pytest.fixture(scope="module")
def scene() -> Scene:
    return moving_square_scene()


@pytest.fixture(scope="module")
def flows(scene: Scene) -> FrameFlow:
    return frame_flow(scene.frames[0], scene.frames[1])


# --- warping -----------------------------------------------------------------------------


def test_warp_by_the_known_shift_reproduces_the_shifted_texture() -> None:
    big = texture(SIZE + 20, SIZE + 20, seed=3, blur=1.5)
    previous = big[..., 10 : 10 + SIZE, 10 : 10 + SIZE]
    dx, dy = 3, -2
    current = big[..., 10 - dy : 10 - dy + SIZE, 10 - dx : 10 - dx + SIZE]  # content moved by (dx, dy)
    backward = torch.tensor([-dx, -dy], dtype=torch.float32).view(1, 2, 1, 1).expand(1, 2, SIZE, SIZE)
    warped = warp(previous, backward)
    keep = interior(4)
    assert torch.allclose(warped[..., keep], current[..., keep], atol=1e-5)
    # the other sign is wrong by a lot: the convention is checked, not just the sampler
    wrong = warp(previous, -backward)
    assert (wrong[..., keep] - current[..., keep]).abs().mean() > 0.05


def test_warp_interpolates_sub_pixel_flows_bilinearly() -> None:
    ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(20.0), indexing="ij")
    ramp = torch.stack((xs, ys, 2 * xs + 3 * ys)).unsqueeze(0)  # bilinear sampling is exact on it
    flow = torch.tensor([0.5, 0.25]).view(1, 2, 1, 1).expand(1, 2, 16, 20)
    warped = warp(ramp, flow)
    expected = torch.stack((xs + 0.5, ys + 0.25, 2 * (xs + 0.5) + 3 * (ys + 0.25))).unsqueeze(0)
    assert torch.allclose(warped[..., :-1, :-1], expected[..., :-1, :-1], atol=1e-4)
    # past the edge the border pixel is repeated, and flagged as outside
    assert torch.allclose(warped[0, 0, :, -1], torch.full((16,), 19.0))
    inside = lands_inside(flow)
    assert inside.shape == (1, 1, 16, 20)
    assert not inside[0, 0, :, -1].any() and not inside[0, 0, -1, :].any()
    assert inside[0, 0, :-1, :-1].all()


# --- consistency on exact flows ----------------------------------------------------------


def test_consistent_global_shift_is_trusted_except_where_it_leaves_the_frame() -> None:
    dx, dy = 3, 2
    forward = torch.tensor([dx, dy], dtype=torch.float32).view(1, 2, 1, 1).expand(1, 2, 40, 50)
    weights = consistency(forward, -forward)
    assert weights.shape == (1, 1, 40, 50)
    assert set(weights.unique().tolist()) <= {0.0, 1.0}
    # pixels of the current frame whose content came from outside the previous one
    assert (weights[0, 0, :dy, :] == 0).all() and (weights[0, 0, :, :dx] == 0).all()
    assert (weights[0, 0, dy:, dx:] == 1).all()


def test_a_sliding_slab_masks_its_motion_boundary_only() -> None:
    height, width, edge, step = 40, 30, 15, 3
    forward = torch.zeros(1, 2, height, width)
    forward[0, 1, :, edge:] = step  # the right part slides down, the left part stays
    weights = consistency(forward, -forward)[0, 0]
    rows = slice(step, None)  # above, the slab's content came from outside the frame
    masked_columns = (weights[rows] == 0).all(dim=0).nonzero().flatten().tolist()
    assert masked_columns == [edge - 1]  # the forward difference across the edge
    assert (weights[:step, edge:] == 0).all()


def test_inconsistent_flows_are_masked_as_disocclusions() -> None:
    forward = torch.zeros(1, 2, 20, 20)
    backward = torch.zeros(1, 2, 20, 20)
    backward[0, 0, 5:15, 5:15] = -2.0  # moved, by the backward flow; still, by the forward
    weights = consistency(forward, backward)[0, 0]
    assert (weights[6:14, 8:14] == 0).all()  # |w̃ + ŵ|² = 4 > 0.01·4 + 0.5
    assert (weights[:4] == 1).all()


# --- DIS flow on the synthetic scene ----------------------------------------------------


def test_dis_flow_recovers_the_known_motion(scene: Scene, flows: FrameFlow) -> None:
    assert flows.backward.shape == flows.forward.shape == (1, 2, SIZE, SIZE)
    background = interior() & ~scene.square(0, MARGIN) & ~scene.square(1, MARGIN)
    truth = torch.tensor(BACKGROUND_STEP, dtype=torch.float32).view(2, 1)
    error = (flows.backward[0][:, background] + truth).norm(dim=0)
    assert error.median() < 0.1 and error.mean() < 0.25, (error.median(), error.mean())
    inside = scene.square(1, -6)
    square_truth = torch.tensor(SQUARE_STEP, dtype=torch.float32).view(2, 1)
    square_error = (flows.backward[0][:, inside] + square_truth).norm(dim=0)
    assert square_error.median() < 0.25, square_error.median()
    # the forward flow moves frame 0's background the other way
    forward_error = (flows.forward[0][:, background] - truth).norm(dim=0)
    assert forward_error.median() < 0.1
    assert flows.seconds > 0
    with pytest.raises(ValueError, match="differ in size"):
        dis_flow(scene.frames[0], scene.frames[1][..., :-1])


def test_consistency_masks_the_disoccluded_region_and_trusts_the_background(
    scene: Scene, flows: FrameFlow
) -> None:
    weights = flows.weights[0, 0]
    assert set(weights.unique().tolist()) <= {0.0, 1.0}
    revealed = disoccluded(scene)
    assert revealed.sum() > 100  # the scene does reveal something
    assert weights[revealed].mean() < 0.3, weights[revealed].mean()  # most of it is 0
    background = interior() & ~scene.square(0, MARGIN) & ~scene.square(1, MARGIN)
    assert weights[background].mean() > 0.95, weights[background].mean()
    assert weights[scene.square(1, -6)].mean() > 0.9  # the moving square itself is tracked


def test_warping_by_the_flow_maps_the_previous_frame_onto_the_current(scene: Scene, flows: FrameFlow) -> None:
    previous, current = scene.frames
    warped = warp(previous, flows.backward)
    trusted = flows.weights[0, 0].bool()
    error = (warped - current).abs().mean(dim=1)[0]
    unwarped = (previous - current).abs().mean(dim=1)[0]
    assert error[trusted].mean() < 0.02, error[trusted].mean()
    assert error[trusted].mean() < unwarped[trusted].mean() / 5
    # the masked pixels are where warping fails: their error is far higher
    assert error[~trusted].mean() > 3 * error[trusted].mean()


# --- the temporal loss -------------------------------------------------------------------


def test_temporal_loss_is_zero_at_the_warped_frame_and_grows_with_departure() -> None:
    gen = torch.Generator().manual_seed(4)
    warped = torch.rand(2, 3, 8, 10, generator=gen)
    weights = (torch.rand(2, 1, 8, 10, generator=gen) > 0.3).float()
    loss = TemporalLoss(warped, weights)
    assert torch.equal(loss(warped), torch.zeros(2))
    # x = ω + δ everywhere: (1/D) Σ c δ² = δ² × the trusted fraction
    values = [loss(warped + delta) for delta in (0.1, 0.2, 0.4)]
    for delta, value in zip((0.1, 0.2, 0.4), values, strict=True):
        expected = delta**2 * weights.mean(dim=(1, 2, 3))
        assert torch.allclose(value, expected, rtol=1e-4)
    assert (values[0] < values[1]).all() and (values[1] < values[2]).all()


def test_temporal_loss_ignores_masked_pixels() -> None:
    warped = torch.zeros(1, 3, 6, 6)
    weights = torch.ones(1, 1, 6, 6)
    weights[..., :3, :] = 0
    loss = TemporalLoss(warped, weights)
    away = torch.zeros(1, 3, 6, 6)
    away[..., :3, :] = 5.0  # departs only where c = 0
    assert loss(away).item() == 0.0
    away[0, 0, 4, 4] = 1.0  # one trusted pixel, one channel: 1/D
    assert loss(away).item() == pytest.approx(1 / (3 * 6 * 6))


def test_temporal_loss_gradient_is_the_equations() -> None:
    gen = torch.Generator().manual_seed(5)
    warped = torch.rand(2, 3, 5, 7, generator=gen, dtype=torch.float64)
    weights = (torch.rand(2, 1, 5, 7, generator=gen) > 0.5).double()
    loss = TemporalLoss(warped, weights).double()
    x = torch.rand(2, 3, 5, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda image: loss(image), (x,))
    (grad,) = torch.autograd.grad(loss(x).sum(), x)
    assert torch.allclose(grad, 2 * weights * (x - warped).detach() / (3 * 5 * 7))
    assert grad.abs().sum() > 0


def test_temporal_loss_joins_the_objectives_single_node_with_its_weight() -> None:
    """How the objective will add it: one ``_Weighted`` node over all terms, α·content +
    γ·temporal, whose hand-written backward must match autograd on the plain formula."""
    gen = torch.Generator().manual_seed(6)
    content_target = torch.rand(1, 4, 3, 3, generator=gen, dtype=torch.float64)
    warped = torch.rand(1, 3, 5, 5, generator=gen, dtype=torch.float64)
    weights = (torch.rand(1, 1, 5, 5, generator=gen) > 0.4).double()
    features = torch.rand(1, 4, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    image = torch.rand(1, 3, 5, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    content, temporal = ContentLoss(content_target).double(), TemporalLoss(warped, weights).double()
    alpha, gamma = 2.0, 200.0
    mix = torch.tensor([[[alpha * content.factor], [gamma * temporal.factor]]], dtype=torch.float64)
    slopes = mix * torch.tensor([content.slope(features), temporal.slope(image)], dtype=torch.float64).view(
        1, 2, 1
    )
    total = _Weighted.apply((content, temporal), mix, slopes, features, image)[:, 0]
    plain = (
        alpha * 0.5 * (features - content_target).square().sum()
        + gamma * (weights * (image - warped).square()).sum() / image.numel()
    )
    assert torch.allclose(total, plain.detach().view(1))
    got = torch.autograd.grad(total.sum(), (features, image))
    want = torch.autograd.grad(plain, (features, image))
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g, w)


def test_warping_error_is_zero_for_a_coherent_pair_and_not_for_another(
    scene: Scene, flows: FrameFlow
) -> None:
    previous = scene.frames[0]
    coherent = warp(previous, flows.backward)  # what a perfectly coherent stylization gives
    assert warping_error(coherent, previous, flows).item() == pytest.approx(0.0, abs=1e-12)
    independent = texture(SIZE, SIZE, seed=9, blur=1.5)  # an unrelated frame: flicker
    assert warping_error(independent, previous, flows).item() > 0.01
    assert np.isfinite(flows.seconds)
