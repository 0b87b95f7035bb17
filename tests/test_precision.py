"""One result per item whatever ran before it, and precision as documented: bf16 runs the
network's convolutions in bfloat16 and everything else in float32; the process-wide
kernel switches are held by one owner per network pass, never toggled per item."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from nst_engine.engine import Stylizer, SynthesisConfig, random_weights
from nst_engine.engine.batch import run_together
from nst_engine.engine.device import network_pass
from nst_engine.engine.images import load_image
from nst_engine.engine.problem import Problem
from nst_engine.engine.targets import TargetCache
from tests.conftest import write_image

FP32 = SynthesisConfig(size=48, iterations=8, precision="fp32")
BF16 = replace(FP32, precision="bf16")


def same(a, b) -> bool:
    """Bit for bit: the image and every loss."""
    return torch.equal(a.image, b.image) and a.stats.total_losses == b.stats.total_losses


def test_an_item_renders_the_same_after_other_precisions(content_path: Path, style_path: Path) -> None:
    """The style targets of a bf16 item are not an fp32 item's (the cache key has the
    precision): on a worker that rendered the same style in bf16 first, an fp32 item
    gives the fresh fp32 result bit for bit."""
    fresh = Stylizer(random_weights(seed=0), device="cpu").synthesize(content_path, [style_path], FP32)
    worker = Stylizer(random_weights(seed=0), device="cpu")
    bf16 = worker.synthesize(content_path, [style_path], BF16)
    after = worker.synthesize(content_path, [style_path], FP32)
    assert not same(bf16, fresh)  # bf16 really differs, so the comparison can fail
    assert same(after, fresh)
    assert worker.cache.hits == 0  # nothing of the bf16 item was reused


def batched(stylizer: Stylizer, jobs: list) -> list:
    with stylizer.batch(len(jobs)) as batch:
        outcomes = run_together([lambda j=j: stylizer.synthesize(*j, batch=batch) for j in jobs], len(jobs))
    for outcome in outcomes:
        assert not isinstance(outcome, BaseException), outcome
    return outcomes


def test_a_batch_renders_the_same_after_other_precisions(tmp_path: Path, style_path: Path) -> None:
    """The same for a batch, up to rounding: a batch's passes hold its members as they
    arrive (a fresh worker's first member also runs its first pass alone, to measure
    memory), and a convolution over two images rounds differently from one over one
    (on the CPU by 1e-7), which L-BFGS then grows. So the losses are compared where the
    runs start, where reused bf16 targets differ by 1e-3."""
    contents = [write_image(tmp_path / f"c{i}.png", 48, 40, seed=i) for i in range(2)]
    fp32 = [(c, [style_path], replace(FP32, seed=i)) for i, c in enumerate(contents)]
    bf16 = [(c, [style_path], replace(BF16, seed=i)) for i, c in enumerate(contents)]
    fresh = batched(Stylizer(random_weights(seed=0), device="cpu"), fp32)
    worker = Stylizer(random_weights(seed=0), device="cpu")
    batched(worker, bf16)
    hits = worker.cache.hits
    after = batched(worker, fp32)
    assert worker.cache.hits == hits + 1  # the second item took the first's fp32 targets, no bf16 ones
    assert all(r.stats.batch_size == 2 for r in after)
    for a, b in zip(after, fresh, strict=True):
        assert a.stats.total_losses[:2] == pytest.approx(b.stats.total_losses[:2], rel=1e-6)
        assert a.stats.final_total_loss == pytest.approx(b.stats.final_total_loss, rel=1e-2)


def test_items_of_two_precisions_in_one_batch_each_render_as_alone(tmp_path: Path, style_path: Path) -> None:
    """Members of different precisions never share a network pass (it would run in one
    of their precisions): each gets its own, so each renders as it would alone."""
    content = write_image(tmp_path / "c.png", 48, 40, seed=3)
    jobs = [(content, [style_path], FP32), (content, [style_path], BF16)]
    alone = [Stylizer(random_weights(seed=0), device="cpu").synthesize(*job) for job in jobs]
    together = batched(Stylizer(random_weights(seed=0), device="cpu"), jobs)
    assert all(same(a, b) for a, b in zip(alone, together, strict=True))


class _Products(TorchDispatchMode):
    """The dtypes of every matrix product and convolution run inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, torch.dtype]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = func.overloadpacket.__name__
        if name in ("mm", "bmm", "baddbmm", "addmm", "convolution", "convolution_backward"):
            self.seen.append((name, args[0].dtype))
        return func(*args, **(kwargs or {}))


def test_bf16_runs_convolutions_in_bfloat16_and_the_gram_matrices_in_float32(
    content_path: Path, style_path: Path
) -> None:
    """The loss gradient is computed outside autocast: the Gram matrices' products run in
    float32 forward and backward (under autocast their backward ran in bfloat16)."""
    cache = TargetCache(random_weights(seed=0), torch.device("cpu"))
    problem = Problem.build(load_image(content_path), [load_image(style_path)], BF16, cache)
    image = problem.initial_image()
    with _Products() as products:
        _, grad = problem.objective.evaluate(image)
    convolutions = [dtype for name, dtype in products.seen if name.startswith("convolution")]
    gram = [dtype for name, dtype in products.seen if "mm" in name]
    assert convolutions and set(convolutions) == {torch.bfloat16}
    assert gram and set(gram) == {torch.float32}, products.seen
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all()


def test_the_kernel_switches_have_one_owner_per_pass() -> None:
    """Two threads passing in fp32 and tf32 at once each see their own TF32 setting for
    their whole pass, and TF32 matrix products stay off in both (the switches are the
    process's, read by every kernel launch on a CUDA device)."""
    device = torch.device("cuda")  # the switches are set for CUDA devices; nothing runs on it here
    seen: dict[str, set[tuple[bool, bool]]] = {"fp32": set(), "tf32": set()}
    start = threading.Barrier(2)

    def pass_in(mode: str) -> None:
        start.wait()
        for _ in range(20):
            with network_pass(device, mode, None):
                for _ in range(3):
                    seen[mode].add((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
                    time.sleep(0.001)

    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    threads = [threading.Thread(target=pass_in, args=(mode,)) for mode in seen]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
    assert seen == {"fp32": {(False, False)}, "tf32": {(True, False)}}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_target_keys_tell_precision_and_memory_format_apart(
    precision: str, content_path: Path, style_path: Path
) -> None:
    cache = TargetCache(random_weights(seed=0), torch.device("cpu"))
    style = [load_image(style_path)]
    content = torch.rand(1, 3, 40, 48)
    config = replace(FP32, precision=precision)
    first = cache.style_targets(style, content, config)
    assert cache.style_targets(style, content, config) is first  # reused as such
    for other in (replace(config, precision="tf32"), replace(config, channels_last=not config.channels_last)):
        assert cache.style_targets(style, content, other) is not first
