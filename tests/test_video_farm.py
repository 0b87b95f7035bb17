"""Video through the farm (issue 21): a manifest's clips expanded into one item per frame,
each shot a chain whose frames wait for the frame before, rendered on real local Ray
clusters (``ray.cluster_utils.Cluster``, a node killed mid-shot), written as PNG frames
and encoded as mp4s at the source's rate with its audio.

The clips are made here: ``cut.mp4`` (12 fps, no audio) pans over one texture for 4
frames and cuts to another for 3 (two shots); ``walk.mp4`` (``test_video_io.make_clip``:
a red square moving over a texture, 12 fps, AAC audio) is one shot of 5 frames.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest
import yaml
from ray.cluster_utils import Cluster

from nst_engine.distributed.options import PoolOptions
from nst_engine.planning.items import WorkItem, expand
from nst_engine.planning.manifest import ManifestError, load_manifest
from nst_engine.runs.render import RenderRequest, render
from nst_engine.storage.video import write_mp4
from tests.conftest import S3Server, write_image
from tests.ray_helpers import assert_outputs_whole, rows
from tests.test_stylize_video import mp4_facts
from tests.test_video_io import RATE, make_clip, scene

CUT_AT, CUT_FRAMES, WALK_FRAMES = 4, 7, 5


def other_scene(index: int, width: int = 64, height: int = 48) -> np.ndarray:
    """A second shot: a warm texture drifting 3 px a frame, nothing like ``scene``'s."""
    y, x = np.mgrid[0:height, 0:width]
    frame = np.stack([150 + 60 * np.sin((x + 3 * index) / 2.0), 60 + 50 * np.cos(y / 3.0), 40 + 0 * x], -1)
    return frame.astype(np.uint8)


def write_manifest(folder: Path, iterations: int, **extra: object) -> Path:
    manifest = {
        "name": "clips",
        "output": "out",
        "videos": ["cut.mp4", "walk.mp4"],
        "styles": ["style.png"],
        "sizes": [48],
        "params": {"iterations": iterations},
        "weights": "random",
        **extra,
    }
    path = folder / "clips.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the two clips and a style image."""
    folder = tmp_path_factory.mktemp("clips")
    frames = [scene(i) for i in range(CUT_AT)] + [other_scene(i) for i in range(CUT_FRAMES - CUT_AT)]
    write_mp4(frames, folder / "cut.mp4", RATE)
    make_clip(folder / "walk.mp4", frames=WALK_FRAMES)
    write_image(folder / "style.png", 40, 48, seed=3)
    return folder


def plan(manifest: Path) -> list[WorkItem]:
    return expand(load_manifest(manifest))


def render_on(cluster: Cluster, manifest: Path, kill: Callable[[], None] | None = None) -> tuple:
    """``nst render``'s run (``runs.render``) on ``cluster`` with one single-CPU worker a
    node, the clips encoded at its end; ``kill`` runs in a thread meanwhile."""
    killer = threading.Thread(target=kill, daemon=True) if kill else None
    try:
        if killer:
            killer.start()
        options = PoolOptions(cpu_actors=2, threads_per_actor=1)
        rendered = render(RenderRequest(manifest, address=cluster.address, options=options))
        if killer:
            killer.join(timeout=30)
    finally:
        cluster.shutdown()
    return rendered.summary, plan(manifest)


def two_node_cluster() -> tuple[Cluster, object]:
    """A head with no CPU for workers and two 1-CPU nodes; the first is returned to kill."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    victim = cluster.add_node(num_cpus=1)
    cluster.add_node(num_cpus=1)
    return cluster, victim


def test_planning_makes_a_chain_per_shot(clips: Path) -> None:
    """Frames × shots: the cut is found from the flow; a shot's first frame runs all the
    iterations and starts no chain, each later frame names the one before and runs half."""
    items = plan(write_manifest(clips, iterations=8))
    assert len(items) == CUT_FRAMES + WALK_FRAMES
    cut = [i for i in items if i.content_path.endswith("cut.mp4")]
    assert [i.frame.shot for i in cut] == [0] * CUT_AT + [1] * (CUT_FRAMES - CUT_AT)
    firsts = [i for i in items if i.after is None]
    assert [(Path(i.content_path).name, i.frame.index) for i in firsts] == [
        ("cut.mp4", 0),
        ("cut.mp4", CUT_AT),
        ("walk.mp4", 0),
    ]
    by_id = {i.item_id: i for i in items}
    for item in items:
        if item.after is not None:
            before = by_id[item.after]
            assert before.frame.index == item.frame.index - 1 and before.frame.shot == item.frame.shot
            assert item.frame.previous_output == before.output_path
    assert {i.config.iterations for i in firsts} == {8}
    assert {i.config.iterations for i in items if i.after} == {4}
    assert cut[0].output_path == "style/48/cut.frames/frame_000000.png"
    assert cut[0].frame.clip_output == "style/48/cut.mp4"
    # ids are content-addressed along the chain: same plan, same ids; a given cut changes
    # the ids from the cut on, not before it
    assert [i.item_id for i in plan(write_manifest(clips, iterations=8))] == [i.item_id for i in items]
    recut = write_manifest(clips, iterations=8)
    data = yaml.safe_load(recut.read_text())
    data["videos"][0] = {"path": "cut.mp4", "cuts": [2]}
    recut.write_text(yaml.safe_dump(data))
    again = [i for i in plan(recut) if i.content_path.endswith("cut.mp4")]
    assert [i.item_id for i in again[:2]] == [i.item_id for i in cut[:2]]
    assert [i.frame.shot for i in again] == [0, 0, 1, 1, 1, 1, 1]
    assert again[2].item_id != cut[2].item_id


def test_a_bad_clip_is_one_line_naming_it(clips: Path, tmp_path: Path) -> None:
    (tmp_path / "cut.mp4").write_bytes(b"not a video")
    (tmp_path / "walk.mp4").symlink_to(clips / "walk.mp4")
    (tmp_path / "style.png").symlink_to(clips / "style.png")
    with pytest.raises(ManifestError) as caught:
        plan(write_manifest(tmp_path, iterations=4))
    problem = caught.value.problems
    assert len(problem) == 1 and "clips.yaml:" in problem[0] and "(video)" in problem[0]
    assert "cut.mp4: cannot read this video" in problem[0] and "\n" not in problem[0]


def test_shots_run_on_both_nodes_and_make_frames_and_mp4s(clips: Path, tmp_path: Path) -> None:
    """Three shots on two single-CPU nodes: both workers take shots; every frame starts
    only after the frame before it finished; each clip's PNG frames and its mp4 at the
    source's exact rate (with walk.mp4's audio) are written."""
    for name in ("cut.mp4", "walk.mp4", "style.png"):
        (tmp_path / name).symlink_to(clips / name)
    manifest = write_manifest(tmp_path, iterations=60)  # long enough for both workers to start
    cluster, _ = two_node_cluster()
    summary, items = render_on(cluster, manifest)
    assert (summary.rendered, summary.failed) == (len(items), [])
    table = [r for r in rows(tmp_path / "out") if r["status"] == "ok"]
    assert Counter(r["item_id"] for r in table) == Counter({i.item_id: 1 for i in items})
    assert len({r["node_id"] for r in table}) == 2  # the shots ran on both nodes
    shots: dict[tuple, set] = {}
    for r in table:
        shots.setdefault((r["content_path"], r["shot"]), set()).add(r["actor_id"])
    assert len(shots) == 3 and all(len(actors) == 1 for actors in shots.values())  # no shot hopped
    by_id = {r["item_id"]: r for r in table}
    for item in items:
        row = by_id[item.item_id]
        assert (row["frame"], row["shot"]) == (item.frame.index, item.frame.shot)
        if item.after is not None:
            assert row["started_at"] >= by_id[item.after]["finished_at"]  # held back till then
            assert row["flow_seconds"] > 0 and row["final_temporal_loss"] is not None
        else:
            assert row["flow_seconds"] is None and row["final_temporal_loss"] is None
    out = tmp_path / "out" / "style" / "48"
    assert len(list((out / "cut.frames").glob("frame_*.png"))) == CUT_FRAMES
    assert mp4_facts(out / "cut.mp4") == (CUT_FRAMES, RATE, None)
    assert mp4_facts(out / "walk.mp4") == (WALK_FRAMES, RATE, "aac")
    assert len(assert_outputs_whole(tmp_path / "out")) == len(items)


def test_a_node_killed_mid_shot_loses_no_frame_and_renders_none_twice(clips: Path, tmp_path: Path) -> None:
    """A node killed once two frames are written: its frame in flight is retried on the
    other node, the frames finished before are not rendered again, every shot goes on
    from its last finished frame, and the clips are encoded whole."""
    for name in ("cut.mp4", "walk.mp4", "style.png"):
        (tmp_path / name).symlink_to(clips / name)
    manifest = write_manifest(tmp_path, iterations=150)
    output = tmp_path / "out"
    cluster, victim = two_node_cluster()
    killed = threading.Event()

    def kill() -> None:
        deadline = time.time() + 120
        while time.time() < deadline and len(list(output.rglob("frame_*.png"))) < 2:
            time.sleep(0.1)
        cluster.remove_node(victim, allow_graceful=False)
        killed.set()

    summary, items = render_on(cluster, manifest, kill)
    assert killed.is_set()
    assert summary.failed == [] and summary.retried >= 1
    table = rows(output)
    assert any(r["status"] == "retried" and "worker lost" in r["error"] for r in table)
    ok = Counter(r["item_id"] for r in table if r["status"] == "ok")
    assert set(ok) == {i.item_id for i in items} and set(ok.values()) == {1}
    assert mp4_facts(output / "style" / "48" / "cut.mp4")[0] == CUT_FRAMES


def test_a_rerun_renders_only_missing_frames_and_encodes_again(clips: Path, tmp_path: Path) -> None:
    """Frames whose images went missing are rendered again, from the finished frame before
    them; the frames before are not touched; the mp4 is encoded again from them all."""
    for name in ("cut.mp4", "walk.mp4", "style.png"):
        (tmp_path / name).symlink_to(clips / name)
    manifest = write_manifest(tmp_path, iterations=6)
    render(RenderRequest(manifest))
    out = tmp_path / "out" / "style" / "48"
    frames, clip = out / "walk.frames", out / "walk.mp4"
    kept = {p.name: p.stat().st_mtime_ns for p in frames.glob("*.png")}
    encoded = clip.stat().st_mtime_ns
    for name in ("frame_000003.png", "frame_000004.png"):
        (frames / name).unlink()
        kept.pop(name)
    summary = render(RenderRequest(manifest)).summary
    assert summary.rendered == 2 and summary.failed == []
    assert {p.name: p.stat().st_mtime_ns for p in frames.glob("*.png") if p.name in kept} == kept
    assert len(list(frames.glob("*.png"))) == WALK_FRAMES
    assert clip.stat().st_mtime_ns > encoded and mp4_facts(clip) == (WALK_FRAMES, RATE, "aac")


def test_frames_of_different_shots_run_as_one_batch(clips: Path, tmp_path: Path) -> None:
    """One worker that runs three syntheses at once and three shots of one shape: frames of
    different shots run in one batch (each with its own optimiser), after the first step
    too, and every frame still waits for the one before it."""
    for name in ("cut.mp4", "walk.mp4", "style.png"):
        (tmp_path / name).symlink_to(clips / name)
    manifest = write_manifest(tmp_path, iterations=30)
    options = PoolOptions(cpu_actors=1, threads_per_actor=1, max_batch=3)
    summary = render(RenderRequest(manifest, options=options)).summary
    items = plan(manifest)
    assert (summary.rendered, summary.failed) == (len(items), [])
    table = {r["item_id"]: r for r in rows(tmp_path / "out") if r["status"] == "ok"}
    later = [table[i.item_id] for i in items if i.after is not None]
    assert max(r["batch_size"] for r in later) >= 2  # later frames of two shots in one pass
    for item in items:
        if item.after is not None:
            assert table[item.item_id]["started_at"] >= table[item.after]["finished_at"]


def test_a_clip_in_a_bucket_renders_into_a_bucket(clips: Path, tmp_path: Path, s3: S3Server) -> None:
    """Clip, style and output root on object storage (moto's S3 on 127.0.0.1): planning
    hashes and cuts the clip through pyarrow, the worker copies it once and decodes it, and
    the frames and the mp4 (with the source's audio) land in the bucket."""
    clip = s3.put("in/walk.mp4", (clips / "walk.mp4").read_bytes())
    style = s3.put("in/style.png", (clips / "style.png").read_bytes())
    output = f"s3://{s3.bucket}/out"
    manifest = tmp_path / "bucket.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "videos": [clip],
                "styles": [style],
                "sizes": [32],
                "params": {"iterations": 4},
                "weights": "random",
            }
        )
    )
    summary = render(RenderRequest(manifest, output=output)).summary
    assert (summary.rendered, summary.failed) == (WALK_FRAMES, [])
    fs = s3.filesystem()
    frames = fs.get_file_info(pafs.FileSelector(f"{s3.bucket}/out/style/32/walk.frames"))
    assert len([f for f in frames if f.base_name.startswith("frame_")]) == WALK_FRAMES
    local = tmp_path / "walk.mp4"
    with fs.open_input_stream(f"{s3.bucket}/out/style/32/walk.mp4") as stream:
        local.write_bytes(stream.read())
    assert mp4_facts(local) == (WALK_FRAMES, RATE, "aac")
