"""Cost: prices and budgets as given, the device-seconds a synthesis uses when it shares
its worker, the budget's projection, and a real render that stops at its ``--budget``
(exit 3, state ``budget``, what is left recorded) and a rerun that finishes it."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from nst_engine.distributed.budget import BudgetGuard
from nst_engine.distributed.device_time import DeviceClock, held_devices
from nst_engine.distributed.pool import Lane, Pool
from nst_engine.results.cost import Bill, Budget, Prices, Spending, parse_budget, parse_prices
from nst_engine.results.table import read_results
from tests.ray_helpers import tiny_manifest
from tests.test_status import nst, status_json


@pytest.mark.parametrize(
    ("text", "per_hour"),
    [
        ("cuda=2.50/h,cpu=0.05/h", {"cuda": 2.5, "cpu": 0.05}),
        ("cuda=0.001/s", {"cuda": 3.6}),
        (" CPU = 1 / min ", {"cpu": 60.0}),
        ("cuda=2", {"cuda": 2.0}),
    ],
)
def test_prices_read_per_hour(text: str, per_hour: dict) -> None:
    prices = parse_prices(text)
    assert prices.per_hour == pytest.approx(per_hour)
    assert parse_prices(prices.text()).per_hour == pytest.approx(per_hour)  # recorded, read back
    assert prices.cost("cuda", 3600) == pytest.approx(per_hour.get("cuda", 0.0))


@pytest.mark.parametrize("text", ["", "tpu=1/h", "cuda=-1/h", "cuda=nan", "cuda=1/week", "cuda=1,cuda=2"])
def test_bad_prices_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"expected KIND=AMOUNT|priced twice"):
        parse_prices(text)


def test_budgets_are_money_or_device_hours() -> None:
    assert parse_budget("40") == Budget(40.0) and parse_budget("12h") == Budget(12.0, device_hours=True)
    for bad in ("0", "-3", "inf", "12 hours", "h"):
        with pytest.raises(ValueError, match="expected an amount of money"):
            parse_budget(bad)
    held = {"cuda": 7200.0, "cpu": 3600.0}
    assert parse_budget("12h").spent(Prices(), held) == 3.0  # device-hours, whatever the prices
    assert parse_budget("40").spent(parse_prices("cuda=2/h,cpu=1/h"), held) == 5.0


def test_bill_prices_what_was_held() -> None:
    bill = Bill(parse_prices("cuda=3.6/h"), held={"cuda": 100.0, "cpu": 50.0}, busy={"cuda": 80.0})
    assert bill.cost == pytest.approx(0.1)
    data = json.loads(bill.to_json())
    assert data["cuda"] == {"held_seconds": 100.0, "busy_seconds": 80.0, "price_per_hour": 3.6, "cost": 0.1}
    assert data["cpu"]["cost"] is None and Bill(Prices(), {"cuda": 1.0}).cost is None


def test_syntheses_side_by_side_share_their_worker_s_devices() -> None:
    """Two syntheses overlapping: each is charged half of the time they overlap, so their
    device-seconds add up to the worker's busy time times its devices."""
    clock = DeviceClock(devices=0.5)  # half a GPU
    used: dict[str, float] = {}
    began = time.monotonic()
    first = clock.start()
    time.sleep(0.2)
    second = clock.start()
    time.sleep(0.2)
    used["first"] = clock.stop(first)
    time.sleep(0.2)
    used["second"] = clock.stop(second)
    busy = time.monotonic() - began
    assert sum(used.values()) == pytest.approx(busy * 0.5, abs=0.01)
    assert used["first"] == pytest.approx((0.2 + 0.1) * 0.5, abs=0.03)
    assert used["second"] == pytest.approx((0.1 + 0.2) * 0.5, abs=0.03)


def test_the_clock_is_safe_from_many_threads() -> None:
    clock = DeviceClock(devices=1.0)
    began = time.monotonic()
    used = []

    def synthesis() -> None:
        mark = clock.start()
        time.sleep(0.05)
        used.append(clock.stop(mark))

    threads = [threading.Thread(target=synthesis) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(used) <= time.monotonic() - began + 1e-6  # never more than the worker held


def test_devices_held_are_ray_s_assignment() -> None:
    assert held_devices("cuda", {"GPU": 0.25, "CPU": 1.0}) == 0.25
    assert held_devices("cpu", {"CPU": 4.0}) == 4.0
    assert held_devices("cpu", {"GPU": 1.0}) == 1.0  # placed as a GPU worker, ran on the CPU


def pool_with_worker(held_seconds: float, devices: float = 1.0, kind: str = "cuda") -> Pool:
    """A pool with one worker that held its devices ``held_seconds`` (released since, so
    the spend stays put while the test runs)."""
    pool = Pool()
    lane = Lane("render", {"num_gpus": 1}, kind, None, 0, 1, items=[])
    pool.lanes.append(lane)
    worker = pool.add_worker(lane, handle=None, ready_ref="ref")
    pool.mark_ready(worker, {"device_kind": kind, "devices": str(devices)})
    worker.released_at = time.time()
    worker.ready_at = worker.released_at - held_seconds
    return pool


def test_budget_projects_the_items_in_flight_and_the_next() -> None:
    pool = pool_with_worker(held_seconds=3600.0)  # 1 GPU-hour held: 2.0 spent at 2/h
    guard = BudgetGuard(Spending(parse_prices("cuda=2/h"), parse_budget("3")))
    assert guard.affordable(pool, "cuda", 5) == 5  # no item back yet: nothing to project from
    assert guard.unknown("cuda")  # ... so dispatch sends a call per worker, no more
    guard.learn("cuda", 900.0)  # an item costs a quarter hour: 0.5
    assert not guard.unknown("cuda") and guard.unknown("cpu")
    assert guard.spent(pool) == pytest.approx(2.0)
    assert guard.affordable(pool, "cuda", 5) == 2  # 1.0 left: two more
    pool.lanes[0].in_flight_items = 1
    assert guard.affordable(pool, "cuda", 5) == 1  # 1.0 - 0.5 in flight: one more
    pool.lanes[0].in_flight_items = 2
    assert guard.affordable(pool, "cuda", 5) == 0
    unlimited = BudgetGuard(Spending(parse_prices("cuda=2/h")))
    assert unlimited.affordable(pool, "cuda", 5) == 5 and unlimited.spent(pool) == 0.0
    assert not unlimited.unknown("cuda")  # no budget: every slot of every worker is used
    over = BudgetGuard(Spending(Prices(), parse_budget("0.5h")))  # device-hours: 1 held already
    assert over.affordable(pool, "cuda", 5) == 0


def test_a_money_budget_needs_a_price_for_every_device_it_may_use(tmp_path: Path) -> None:
    manifest = tiny_manifest(tmp_path, contents=1, styles=1)
    proc = nst("render", str(manifest), "--no-gpus", "--budget", "5", "--price", "cuda=2/h", cwd=tmp_path)
    assert proc.returncode == 2
    assert "--budget: 5 is money, and --price has no price for cpu" in proc.stderr
    assert not (tmp_path / "out").exists()  # refused before anything ran
    bad = nst("render", str(manifest), "--budget", "lots", cwd=tmp_path)
    assert bad.returncode == 2 and "--budget: expected an amount of money" in bad.stderr


def test_a_render_stops_at_its_budget_and_a_rerun_finishes_it(tmp_path: Path) -> None:
    """One CPU worker of one thread (one core) on items of about half a second: after the
    first item back its spend is past a budget of 0.36 device-seconds, so no item is
    handed out after the first calls; the rest is recorded as left, and a rerun with no
    budget renders exactly the rest."""
    manifest = tiny_manifest(tmp_path, contents=4, styles=2, sizes=(48,), iterations=200)
    args = ["render", str(manifest), "--no-gpus", "--workers", "1", "--threads-per-actor", "1", "-q"]
    stopped = nst(*args, "--budget", "0.0001h", "--price", "cpu=3.6/h", cwd=tmp_path)
    assert stopped.returncode == 3, stopped.stderr
    assert "budget reached: the next item would have passed --budget 0.0001h" in stopped.stderr
    out = tmp_path / "out"
    rows = read_results(str(out)).to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    assert 1 <= len(ok) < 8 and all(r["device_seconds"] > 0 and r["device_type"] == "cpu" for r in ok)
    [run] = pq.read_table(out / "runs.parquet").to_pylist()
    assert run["state"] == "budget" and run["budget"] == "0.0001h" and run["prices"] == "cpu=3.6/h"
    assert run["budget_left"] == 8 - len(ok) and f"{run['budget_left']} items left to do" in stopped.stderr
    assert run["device_seconds_busy"] == pytest.approx(sum(r["device_seconds"] for r in ok))
    assert run["device_seconds_held"] >= run["device_seconds_busy"]
    assert run["cost"] == pytest.approx(run["device_seconds_held"] * 3.6 / 3600)
    assert json.loads(run["bill"])["cpu"]["price_per_hour"] == 3.6
    found = status_json(str(out))
    left = run["budget_left"]
    assert (found["state"], found["budget_left"], found["to_go"]) == ("budget", left, 8 - len(ok))
    assert found["cost_basis"] == "bill" and found["cost"] == pytest.approx(run["cost"])
    assert found["cost_per_item"] == pytest.approx(found["device_seconds"] * 0.001 / len(ok))

    finished = nst(*args, cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr
    rows = read_results(str(out)).to_pylist()
    ok_ids = [r["item_id"] for r in rows if r["status"] == "ok"]
    assert len(ok_ids) == len(set(ok_ids)) == 8  # the rest, and nothing twice
    assert status_json(str(out))["state"] == "finished"
    report = nst("report", str(out), "--output", str(tmp_path / "report"), cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    page = (tmp_path / "report" / "index.html").read_text()
    cost = page[page.index('<h2 id="cost">') : page.index('<h2 id="failures">')]
    assert cost.count("<tr><td>") == 2 and "budget, " in cost and "cpu=3.6/h" in cost
