"""The latency-curve driver's pure parts (scripts/bench_curve.py, scripts/bench.py):
the rate schedule, the run bound, the idle test's source addresses, and the
SVG writer. No timing, no processes."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import bench  # noqa: E402
import bench_curve  # noqa: E402

SVG = "{http://www.w3.org/2000/svg}"


def test_rate_schedule_is_the_fractions_of_the_peak():
    assert bench_curve.rate_schedule(1600) == [(0.25, 400), (0.5, 800), (0.75, 1200), (0.9, 1440)]
    assert bench_curve.rate_schedule(2, [0.1]) == [(0.1, 1)]
    for bad in (0, -5, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            bench_curve.rate_schedule(bad)
    with pytest.raises(ValueError):
        bench_curve.rate_schedule(100, [0])


def test_run_deadline_leaves_room_for_the_schedule():
    assert bench_curve.run_deadline(3000, 400) == 32.5
    assert bench_curve.run_deadline(3000, 3000) > 3000 / 3000


def test_idle_spreads_beyond_one_source_addresss_ports():
    assert bench.idle_sources(1000) == 1
    assert bench.idle_sources(20000) == 1
    assert bench.idle_sources(20001) == 2
    assert bench.idle_sources(50000) == 3
    assert bench.descriptors_needed(50000) > 50000


def test_svg_parses_and_holds_every_point():
    series = [
        {"name": "Postern p50", "mta": "Postern", "points": [(400, 0.7), (800, 0.9), (1440, 1.4)]},
        {"name": "Postfix p99", "mta": "Postfix", "dash": True, "points": [(400, 20.0), (800, None), (1440, 250.0)]},
    ]
    text = bench_curve.svg_curve("t <&>", "s", series, "x", "y", {400: "25%"})
    root = ET.fromstring(text)
    assert root.tag == f"{SVG}svg"
    titles = [t.text for t in root.iter(f"{SVG}title")]
    assert "Postern p50: 1,440 msg/s, 1.40 ms" in titles
    assert "Postfix p99: 400 msg/s, 20.00 ms" in titles
    assert len(titles) == 5  # the None point is left out
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "t <&>" in texts and "25%" in texts
    with pytest.raises(ValueError):
        bench_curve.svg_curve("t", "s", [{"name": "n", "points": []}], "x", "y")
