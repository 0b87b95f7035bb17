"""The driver's bookkeeping of video shots (``pool.Lane``): a frame waits for the frame
before it, goes out when that one has its image, to the worker that rendered it while that
worker has room, and is cut off with the rest of its shot when it cannot start. Plain data:
no Ray here (tests/test_video_farm.py runs shots on real clusters)."""

from __future__ import annotations

from nst_engine.distributed.pool import Lane, Worker
from nst_engine.engine.config import SynthesisConfig
from nst_engine.planning.items import FrameRef, WorkItem


def frames(clip: str, shots: list[int]) -> list[WorkItem]:
    """A clip's frame items: ``shots`` frames in each shot, each after the one before it."""
    items: list[WorkItem] = []
    index = 0
    for shot, count in enumerate(shots):
        previous = None
        for _ in range(count):
            ident = f"{clip}-{index}"
            ref = FrameRef(clip, None, index, shot, sum(shots), f"{clip}.mp4", previous)
            items.append(
                WorkItem(
                    ident,
                    "m",
                    clip,
                    ident,
                    "s",
                    ("s.png",),
                    ("h",),
                    (1.0,),
                    32,
                    SynthesisConfig(size=32),
                    f"{ident}.png",
                    1024,
                    frame=ref,
                )
            )
            previous, index = ident, index + 1
    return items


def lane_of(items: list[WorkItem], workers: int = 2) -> tuple[Lane, list[Worker]]:
    lane = Lane("render", {}, "cpu", 1, 1, workers, items, max_batch=1)
    made = []
    for key in range(workers):
        worker = Worker(key, lane, handle=None, ready_ref=key, ready=True, info={"max_batch": "1"})
        lane.members[key] = worker
        made.append(worker)
    return lane, made


def ids(batch: list[tuple[WorkItem, int]]) -> list[str]:
    return [item.item_id for item, _ in batch]


def test_only_shot_starts_are_queued_and_each_frame_follows_its_predecessor() -> None:
    lane, (first, _) = lane_of(frames("a", [3, 2]))
    assert lane.chained and [i.item_id for i, _ in lane.queue] == ["a-0", "a-3"]
    assert set(lane.waiting) == {"a-0", "a-1", "a-3"}  # keyed by the frame they wait for
    assert ids(lane.hand_out(first, 1)) == ["a-0"]
    lane.release("a-0", first)
    assert [i.item_id for i, _ in lane.queue] == ["a-1", "a-3"]  # first in line
    assert "a-0" not in lane.waiting and lane.waiting["a-1"].item_id == "a-2"


def test_a_resumed_shot_starts_at_its_first_missing_frame() -> None:
    """Frames done in an earlier run are not in the lane: the next one waits for nothing."""
    lane, _ = lane_of(frames("a", [4])[2:])
    assert [i.item_id for i, _ in lane.queue] == ["a-2"] and set(lane.waiting) == {"a-2"}


def test_a_released_frame_goes_to_its_shots_worker_while_it_has_room() -> None:
    lane, (w0, w1) = lane_of(frames("a", [2]) + frames("b", [2]))
    assert ids(lane.hand_out(w0, 1)) == ["a-0"] and ids(lane.hand_out(w1, 1)) == ["b-0"]
    for worker, done in ((w0, "a-0"), (w1, "b-0")):
        worker.items, worker.in_flight = 0, 0  # its call came back
        lane.release(done, worker)
    assert [i.item_id for i, _ in lane.queue] == ["b-1", "a-1"]
    assert ids(lane.hand_out(w0, 1)) == ["a-1"]  # not b-1 at the head: that is w1's
    assert ids(lane.hand_out(w1, 1)) == ["b-1"]


def test_a_busy_or_lost_home_does_not_hold_a_frame_back() -> None:
    lane, (w0, w1) = lane_of(frames("a", [2]))
    lane.hand_out(w0, 1)
    lane.release("a-0", w0)  # w0 still holds its call: no room there
    assert ids(lane.hand_out(w1, 1)) == ["a-1"]
    lane2, (v0, v1) = lane_of(frames("b", [2]))
    lane2.hand_out(v0, 1)
    v0.items = 0
    lane2.release("b-0", v0)
    v0.dead = True  # retired: its frames go to whoever is free
    assert ids(lane2.hand_out(v1, 1)) == ["b-1"]


def test_a_worker_gets_nothing_when_every_queued_frame_is_anothers() -> None:
    lane, (w0, w1) = lane_of(frames("a", [2]))
    lane.hand_out(w0, 1)
    w0.items = 0
    lane.release("a-0", w0)
    assert lane.hand_out(w1, 1) == [] and w1.in_flight == 0 and len(lane.queue) == 1


def test_a_frame_that_fails_cuts_off_the_rest_of_its_shot_only() -> None:
    lane, _ = lane_of(frames("a", [4, 2]))
    assert [i.item_id for i in lane.cut_off("a-1")] == ["a-2", "a-3"]
    assert set(lane.waiting) == {"a-0", "a-4"}  # a-1 still waits on a-0; the other shot is whole
    assert lane.clear() == 2 + 2 and not lane.waiting and not lane.queue  # two queued, two waiting
