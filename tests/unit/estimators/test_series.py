"""The per-series sample store (`estimators.series`): what a pass reads is what arrived and is kept."""

from __future__ import annotations

import numpy as np

from estimators.series import SampleStore


def _rows(pods: range, at: float) -> list[tuple[str, float, float, dict[str, str]]]:
    return [("generation_tokens_total", 10.0 * at, at, {"namespace": "llm", "pod": f"p{p}"}) for p in pods]


def test_samples_come_out_per_series_in_time_order_whatever_order_they_arrived_in() -> None:
    store = SampleStore()
    store.add_rows(_rows(range(2), 30.0) + _rows(range(2), 15.0), received_seconds=31.0)
    store.add_rows(_rows(range(1), 45.0) + _rows(range(1), 0.0), received_seconds=46.0)
    block = store.view(100.0).block("generation_tokens_total", ["namespace", "pod"])
    assert list(block.labels["pod"]) == ["p0", "p1"]
    assert block.group.tolist() == [0, 0, 0, 0, 1, 1]
    assert block.times.tolist() == [0.0, 15.0, 30.0, 45.0, 15.0, 30.0]
    assert block.since(20.0).times.tolist() == [30.0, 45.0, 30.0]


def test_a_series_whose_batches_all_left_is_forgotten_and_can_come_back() -> None:
    store = SampleStore()
    store.add_rows(_rows(range(100), 0.0), received_seconds=0.0)
    store.add_rows(_rows(range(10), 15.0), received_seconds=15.0)
    store.evict(10.0)  # the first batch goes: 90 of 100 pods have no sample left
    block = store.view(100.0).block("generation_tokens_total", ["namespace", "pod"])
    assert list(block.labels["pod"]) == [f"p{p}" for p in range(10)]
    assert np.array_equal(block.times, np.full(10, 15.0))
    store.add_rows(_rows(range(95, 100), 30.0), received_seconds=30.0)
    block = store.view(100.0).block("generation_tokens_total", ["namespace", "pod"])
    assert list(block.labels["pod"]) == [*(f"p{p}" for p in range(10)), *(f"p{p}" for p in range(95, 100))]
    assert block.times[block.group >= 10].tolist() == [30.0] * 5


def test_memory_follows_the_series_and_samples_kept_not_how_often_the_layout_grew() -> None:
    """1,000 series polled every second for four minutes, two minutes kept: the layout holds about
    1,000 x 128 slots, not a table that doubled its series room with every doubling of its slots."""
    store = SampleStore()
    for second in range(240):
        store.add_rows(_rows(range(1_000), float(second)), received_seconds=float(second))
        store.evict(second - 120.0)
    kept = 121 * 1_000 * 3 * 8  # 121 samples of 1,000 series, three float64 arrays
    assert kept <= store.nbytes <= 4 * kept


def test_a_view_leaves_out_samples_after_its_now_even_when_every_series_has_as_many() -> None:
    """A pass at `now` must not see a poll stamped after it, whichever way the view reads the layout."""
    store = SampleStore()
    for at in (0.0, 15.0, 30.0):
        store.add_rows(_rows(range(3), at), received_seconds=at)
    early = store.view(20.0).block("generation_tokens_total", ["namespace", "pod"])
    assert early.times.tolist() == [0.0, 15.0] * 3
    late = store.view(30.0).block("generation_tokens_total", ["namespace", "pod"])
    assert late.times.tolist() == [0.0, 15.0, 30.0] * 3
    assert late.values.tolist() == [0.0, 150.0, 300.0] * 3


def test_one_pod_has_one_id_in_every_metric_until_the_store_forgets_series() -> None:
    store = SampleStore()
    rows = _rows(range(2), 0.0)
    store.add_rows(rows + [("prompt_tokens_total", 1.0, 0.0, labels) for _, _, _, labels in rows[::-1]], 1.0)
    view = store.view(10.0)
    generated = view.block("generation_tokens_total", ["namespace", "pod"])
    prompted = view.block("prompt_tokens_total", ["namespace", "pod"])
    assert list(generated.labels["pod"]) == ["p0", "p1"] and list(prompted.labels["pod"]) == ["p1", "p0"]
    assert generated.ids.tolist() == prompted.ids[::-1].tolist()
    names = view.space(["namespace", "pod"]).columns(generated.ids)
    assert names["pod"].tolist() == ["p0", "p1"]
