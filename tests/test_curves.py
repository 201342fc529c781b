"""benchmarks/curves.py: the figure each family draws, curves that resume across segments
and invocations (a VAE from the command line, a GAN's FID in process), reading a reference
(peer) curve and drawing the race as a PNG."""

import dataclasses
import json
import math
import subprocess
import sys

import pytest

from benchmarks import curves
from gen_keras.config import DataConfig, UsageError
from gen_keras.models import gan, pixelcnn
from tests.conftest import REPO, small_data, small_train


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


def test_each_family_draws_its_figure_and_a_gan_needs_a_classifier():
    binary, eight_bit = DataConfig(), DataConfig(binarization="uint8")
    assert curves.metric_for("pixelcnn", binary, pixelcnn.reproduce()) == "nll_nats"
    assert curves.metric_for("pixelcnn", eight_bit, pixelcnn.Config()) == "nll_bits_per_dim"
    assert curves.metric_for("gan", binary, gan.Config(classifier="runs/classifier")) == "fid"
    with pytest.raises(UsageError, match="--family=gan draws FID against minutes: give"):
        curves.metric_for("gan", binary, gan.small())


def test_a_vae_curve_from_the_command_line_resumes_segment_after_segment(mnist_dir, tmp_path):
    run = tmp_path / "curve"
    command = [
        sys.executable,
        "-m",
        "benchmarks.curves",
        "--family=vae",
        "--config=small",
        "--eval_k=4",
        f"--data_dir={mnist_dir}",
        "--nodownload",
        "--train_split=train[:512]",
        "--eval_split=test[:128]",
        "--batch_size=32",
        "--segment_minutes=0.02",
        f"--model_dir={run}",
    ]
    result = subprocess.run(
        [*command, "--segments=2"], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    curve = json.loads((run / "curve.json").read_text())
    assert curve["family"] == "vae" and curve["metric"] == "nll_nats"
    assert curve["config"]["eval_k"] == 4 and curve["batch_size"] == 32
    points = curve["points"]
    # Minutes are the run's training clock: each segment trains at least its 0.02 minutes,
    # and the second resumed the first (its steps and its clock).
    assert points[0]["minutes"] >= 0.02 and points[1]["minutes"] - points[0]["minutes"] >= 0.02
    assert 0 < points[0]["step"] < points[1]["step"]
    clock = json.loads((run / "train_clock.json").read_text())
    assert clock[str(points[1]["step"])] == pytest.approx(60 * points[1]["minutes"])
    assert all(math.isfinite(p["nll_nats"]) and p["nll_nats"] > 0 for p in points)
    assert (run / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A GAN's FID cannot extend this curve, and the refusal comes before any training.
    refused = subprocess.run(
        [*command[:3], "--family=gan", "--config=small", "--classifier=x", f"--model_dir={run}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "draws nll_nats, not fid" in refused.stderr
    assert json.loads((run / "curve.json").read_text()) == curve


def test_a_wgan_gp_curve_takes_the_trainers_batch_of_n_critic_minibatches(tmp_path):
    """As trainers.gan: without --batch_size a WGAN-GP step is 5 critic minibatches of 64."""
    run = tmp_path / "curve"
    base = [sys.executable, "-m", "benchmarks.curves", "--family=gan", "--classifier=x"]
    for extra, batch in (([], 320), (["--batch_size=640"], 640)):
        result = subprocess.run(
            [*base, "--loss=wgan_gp", "--segments=0", f"--model_dir={run}", *extra],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )  # --segments=0 records the curve's settings without training
        assert result.returncode == 0, result.stderr[-3000:]
        curve = json.loads((run / "curve.json").read_text())
        assert curve["batch_size"] == batch and curve["name"].startswith("gan wgan_gp ")


def test_a_gan_curve_draws_fid_on_the_classifier(mnist_dir, tmp_path, mnist_classifier):
    config = dataclasses.replace(
        gan.small(), classifier=mnist_classifier.model_dir, fid_samples=64, final_samples=128
    )
    data = small_data(mnist_dir, binarization="float_symmetric")
    train = small_train(tmp_path, epochs=10_000, steps_per_epoch=None, export=False)
    curve = curves.extend("gan", config, data, train, segment_minutes=0.02, segments=1)
    assert curve["metric"] == "fid" and len(curve["points"]) == 1
    point = curve["points"][0]
    assert point["step"] > 0 and math.isfinite(point["fid"]) and point["fid"] > 0
    assert json.loads((tmp_path / "run" / "curve.json").read_text()) == curve


def test_an_older_curve_adopts_its_last_point_as_the_clock_or_is_refused(tmp_path):
    """A run curved before the harness kept a clock: its last point's minutes become the
    clock at its step; past that step without a clock, its minutes are unknown."""
    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    (ckpt / "ckpt-40.index").write_bytes(b"")
    points = [{"minutes": 8.0, "step": 40, "nll_nats": 93.0}]
    curves.adopt_clock(str(tmp_path), points)
    assert json.loads((tmp_path / "train_clock.json").read_text()) == {"40": 480.0}
    (tmp_path / "train_clock.json").unlink()
    (ckpt / "ckpt-90.index").write_bytes(b"")  # a segment killed after step 40, no clock
    with pytest.raises(UsageError, match="trained to step 90 after its curve's last point"):
        curves.adopt_clock(str(tmp_path), points)


def test_a_segment_killed_after_its_clock_rotated_past_the_last_point_resumes(tmp_path):
    """The clock keeps only the checkpoints on disk: a segment killed after a few saves no
    longer names the curve's last step, but it knows the newest checkpoint's seconds, which
    the resumed segment counts from; nothing is adopted or refused."""
    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    for step in (20625, 21000, 21500):
        (ckpt / f"ckpt-{step}.index").write_bytes(b"")
    clock = {"20625": 1901.4, "21000": 1951.5, "21500": 1997.0}
    (tmp_path / "train_clock.json").write_text(json.dumps(clock))
    points = [{"minutes": 30.0, "step": 19474, "nll_nats": 83.47}]
    curves.adopt_clock(str(tmp_path), points)
    assert json.loads((tmp_path / "train_clock.json").read_text()) == clock


def _log_line(minutes, start=100.0, per_e=-2.0):
    """Points exactly on y = start + per_e * ln(minutes)."""
    return [{"minutes": m, "nll_nats": start + per_e * math.log(m)} for m in minutes]


def test_extrapolation_follows_the_last_points_slope_in_log_minutes():
    # The first point is off the line: only the last three are fitted.
    points = [{"minutes": 1.0, "nll_nats": 150.0}, *_log_line([2.0, 4.0, 8.0])]
    estimate = curves.extrapolate(points, "nll_nats", 90.0)
    assert estimate["fitted_minutes"] == [2.0, 4.0, 8.0]
    assert estimate["per_doubling"] == pytest.approx(-2.0 * math.log(2))
    assert estimate["hours"] == pytest.approx(math.exp(5.0) / 60)  # 100 - 2 ln t = 90
    assert estimate["gap"] == pytest.approx(100 - 2 * math.log(8) - 90)
    assert "~2.5 h at that slope (a lower bound)" in curves.describe(estimate)


def test_extrapolation_reports_a_reached_target_and_refuses_a_flat_curve():
    points = _log_line([2.0, 4.0, 8.0])
    reached = curves.extrapolate(points, "nll_nats", 97.5)  # 100-2 ln 4 < 97.5 < 100-2 ln 2
    assert reached["reached_minutes"] == 4.0 and "hours" not in reached
    flat = [{"minutes": m, "nll_nats": 95.0} for m in (8.0, 30.0)]
    assert curves.extrapolate(flat, "nll_nats", 90.0)["hours"] is None
    assert "no finite estimate" in curves.describe(curves.extrapolate(flat, "nll_nats", 90.0))
    same_minutes = [{"minutes": 8.0, "nll_nats": y} for y in (95.0, 94.0)]  # no time between
    assert "different minutes" in curves.extrapolate(same_minutes, "nll_nats", 90.0)["why"]
    with pytest.raises(UsageError, match="the curve has no point yet"):
        curves.extrapolate([], "nll_nats", 90.0)
    with pytest.raises(UsageError, match="--targets takes numbers, e.g. 81.30,79.20; got x"):
        curves.parse_targets(["x"])


def test_redrawing_a_curve_with_targets_records_and_draws_them(tmp_path):
    points = [{**p, "step": 10 * i} for i, p in enumerate(_log_line([8.0, 30.0, 60.0]))]
    (tmp_path / "curve.json").write_text(json.dumps({"points": points}))
    train_config = small_train(tmp_path, model_dir=str(tmp_path))
    curve = curves.extend(
        "pixelcnn", pixelcnn.reproduce(), DataConfig(), train_config, 8.0, 0, targets=(81.3, 99.0)
    )
    written = json.loads((tmp_path / "curve.json").read_text())
    assert written["targets"] == curve["targets"]
    assert [t["target"] for t in written["targets"]] == [81.3, 99.0]
    assert written["targets"][0]["hours"] > 1.0 and written["targets"][1]["reached_minutes"] == 8
    assert written["points"] == points  # no segment trained
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"


def test_an_overview_draws_every_runs_curve_and_refuses_a_run_without_points(tmp_path):
    runs = []
    for name, metric, values in (
        ("vae", "nll_nats", [91.1, 90.5]),
        ("pixelrnn", "nll_nats", [92.0, 88.5]),
        ("gan", "fid", [20.0, 15.2]),
    ):
        run = tmp_path / name
        run.mkdir()
        points = [{"minutes": 8.0 * (i + 1), metric: v} for i, v in enumerate(values)]
        (run / "curve.json").write_text(
            json.dumps({"name": name, "metric": metric, "points": points})
        )
        runs.append(str(run))
    one, all_three = tmp_path / "one.png", tmp_path / "all.png"
    assert curves.overview(runs[:1], one) and curves.overview(runs, all_three)
    assert all_three.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert all_three.read_bytes() != one.read_bytes()  # two panels, three lines
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="empty has no curve points"):
        curves.overview([*runs, str(tmp_path / "empty")], tmp_path / "x.png")


def test_a_nearly_flat_curve_is_described_as_flat_not_by_its_astronomic_hours():
    # 8-bit PixelCNN between 8 and 16 minutes: 1.161 -> 1.1587 bits/dim, target 1.06
    points = [
        {"minutes": 8.0, "nll_bits_per_dim": 1.161},
        {"minutes": 16.0, "nll_bits_per_dim": 1.1587},
    ]
    estimate = curves.extrapolate(points, "nll_bits_per_dim", 1.06)
    assert estimate["hours"] > curves.FLAT_HOURS
    line = curves.describe(estimate)
    assert line.endswith("-0.0023 per doubling of time: flat, over 100,000 h at that slope")
