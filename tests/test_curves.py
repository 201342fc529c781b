"""benchmarks/curves.py: reading a reference (peer) curve and drawing the race as a PNG."""

import json

import pytest

from benchmarks import curves


def _write_lines(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_reference_points_sorted_by_minutes(tmp_path):
    path = tmp_path / "peer.jsonl"
    _write_lines(
        path,
        [
            {"train_minutes": 30.0, "test_nll_nats": 90.5, "side": "peer"},
            {"train_minutes": 8.0, "test_nll_nats": 95.0},
        ],
    )
    assert curves.read_reference(path) == [
        {"minutes": 8.0, "nll_nats": 95.0},
        {"minutes": 30.0, "nll_nats": 90.5},
    ]


def test_reference_point_without_nll_is_one_line_error(tmp_path):
    path = tmp_path / "peer.jsonl"
    _write_lines(path, [{"train_minutes": 8.0}])
    with pytest.raises(ValueError, match=r"peer.jsonl:1: a reference point needs 'test_nll_nats'"):
        curves.read_reference(path)


def test_draw_writes_png_with_both_curves(tmp_path):
    curve = {
        "name": "pixelcnn",
        "points": [{"minutes": 8.0, "nll_nats": 92.0}, {"minutes": 30.0, "nll_nats": 88.0}],
    }
    reference = [{"minutes": 8.0, "nll_nats": 95.0}, {"minutes": 30.0, "nll_nats": 90.0}]
    alone, both = tmp_path / "alone.png", tmp_path / "both.png"
    assert curves.draw(curve, alone)
    assert curves.draw(curve, both, reference, "peer")
    for path in (alone, both):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert alone.read_bytes() != both.read_bytes()  # the reference line and legend are drawn
