import math
import os
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from runners.llamafactory.progress import Progress, parse_trainer_log_line
from runners.plots import DPI, FIGURE_SIZE_IN, build_loss_figure, render_loss_plot, smooth

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# From a real LLaMA-Factory 0.9.5 run: train lines, an eval line at step 4, and the final summary line.
REAL_LOG = """\
{"current_steps": 1, "total_steps": 32, "loss": 6.2496538162231445, "lr": 0.001, "epoch": 0.0625, "percentage": 3.12, "elapsed_time": "0:00:00", "remaining_time": "0:00:09", "throughput": 265.24, "total_tokens": 80}
{"current_steps": 2, "total_steps": 32, "loss": 6.23703670501709, "lr": 0.00096875, "epoch": 0.125, "percentage": 6.25, "elapsed_time": "0:00:00", "remaining_time": "0:00:08", "throughput": 283.46, "total_tokens": 160}
{"current_steps": 3, "total_steps": 32, "loss": 6.20308256149292, "lr": 0.0009375, "epoch": 0.1875, "percentage": 9.38, "elapsed_time": "0:00:01", "remaining_time": "0:00:10", "throughput": 243.82, "total_tokens": 256}
{"current_steps": 4, "total_steps": 32, "loss": 6.1692795753479, "lr": 0.00090625, "epoch": 0.25, "percentage": 12.5, "elapsed_time": "0:00:01", "remaining_time": "0:00:12", "throughput": 189.69, "total_tokens": 352}
{"current_steps": 4, "total_steps": 32, "eval_loss": 6.168416500091553, "epoch": 0.25, "percentage": 12.5, "elapsed_time": "0:00:03", "remaining_time": "0:00:22", "throughput": 111.4, "total_tokens": 352}
{"current_steps": 5, "total_steps": 32, "loss": 6.129022121429443, "lr": 0.000875, "epoch": 0.3125, "percentage": 15.62, "elapsed_time": "0:00:03", "remaining_time": "0:00:18", "throughput": 123.44, "total_tokens": 432}
{"current_steps": 32, "total_steps": 32, "epoch": 2.0, "percentage": 100.0, "elapsed_time": "0:00:12", "remaining_time": "0:00:00", "throughput": 214.75, "total_tokens": 2688}
"""  # noqa: E501


def real_points() -> list[Progress]:
    return [parse_trainer_log_line(line) for line in REAL_LOG.splitlines()]


def long_run(steps: int = 300, eval_every: int = 50) -> list[Progress]:
    points = []
    for step in range(1, steps + 1):
        points.append(
            Progress(step=step, total=steps, loss=1 + 2 * math.exp(-step / 60) + 0.1 * math.sin(step))
        )
        if step % eval_every == 0:
            points.append(Progress(step=step, total=steps, eval_loss=1.1 + 2 * math.exp(-step / 70)))
    return points


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def series(figure) -> dict[str, object]:
    (axes,) = figure.axes
    return {artist.get_gid(): artist for artist in [*axes.lines, *axes.collections] if artist.get_gid()}


EXPECTED_SIZE = (round(FIGURE_SIZE_IN[0] * DPI), round(FIGURE_SIZE_IN[1] * DPI))


def test_real_log_renders_a_png_of_the_expected_size(tmp_path):
    dest = render_loss_plot(
        real_points(), tmp_path / "loss.png", title="#7 tiny-llama", subtitle="lora · train"
    )
    assert dest == tmp_path / "loss.png"
    assert png_size(dest) == EXPECTED_SIZE == (960, 540)


def test_train_raw_smoothed_and_eval_series_are_drawn():
    figure = build_loss_figure(real_points(), title="#7 tiny-llama")
    drawn = series(figure)
    assert set(drawn) == {"train-raw", "train-smoothed", "eval"}
    raw_steps = [tuple(xy) for xy in drawn["train-raw"].get_offsets()]
    assert [step for step, _ in raw_steps] == [1, 2, 3, 4, 5]  # the summary line has no loss
    assert list(drawn["eval"].get_xdata()) == [4]
    assert drawn["eval"].get_ydata()[0] == pytest.approx(6.1684165)
    assert len(drawn["train-smoothed"].get_xdata()) == 5


def test_axes_title_and_legend_say_what_is_shown():
    figure = build_loss_figure(real_points(), title="#7 tiny-llama", subtitle="lora · train")
    (axes,) = figure.axes
    assert axes.get_xlabel() == "step" and axes.get_ylabel() == "loss"
    assert figure.get_suptitle() == "#7 tiny-llama"
    assert axes.get_title() == "lora · train"
    labels = [text.get_text() for text in axes.get_legend().get_texts()]
    assert labels == ["train loss (last 6.129)", "train loss, smoothed", "eval loss (last 6.168)"]
    assert any(line.get_visible() for line in axes.get_xgridlines())


def test_x_axis_leaves_room_for_the_steps_to_come():
    points = [
        Progress(step=p.step, total=400, loss=p.loss) for p in long_run(steps=100) if p.loss is not None
    ]
    figure = build_loss_figure(points, title="t")
    left, right = figure.axes[0].get_xlim()
    assert left == 0 and 400 <= right < 410


def test_without_eval_there_is_no_eval_series(tmp_path):
    points = [p for p in long_run() if p.loss is not None]
    assert set(series(build_loss_figure(points, title="t"))) == {"train-raw", "train-smoothed"}
    assert png_size(render_loss_plot(points, tmp_path / "a.png", title="t")) == EXPECTED_SIZE


def test_one_point_renders(tmp_path):
    points = [parse_trainer_log_line(REAL_LOG.splitlines()[0])]
    assert png_size(render_loss_plot(points, tmp_path / "one.png", title="#1 tiny")) == EXPECTED_SIZE
    assert len(series(build_loss_figure(points, title="t"))["train-smoothed"].get_xdata()) == 1


def test_many_points_render(tmp_path):
    points = long_run(steps=20000, eval_every=1000)
    assert png_size(render_loss_plot(points, tmp_path / "many.png", title="#2 big")) == EXPECTED_SIZE


def test_nan_losses_are_left_out(tmp_path):
    points = [
        Progress(step=1, loss=2.0),
        Progress(step=2, loss=float("nan")),
        Progress(step=3, loss=1.5),
        Progress(step=3, eval_loss=float("inf")),
    ]
    drawn = series(build_loss_figure(points, title="t"))
    assert [xy[0] for xy in drawn["train-raw"].get_offsets()] == [1, 3]
    assert all(math.isfinite(y) for y in drawn["train-smoothed"].get_ydata())
    assert "eval" not in drawn
    assert png_size(render_loss_plot(points, tmp_path / "nan.png", title="t")) == EXPECTED_SIZE


def test_no_points_still_gives_a_png_saying_so(tmp_path):
    figure = build_loss_figure([Progress(step=1, total=8)], title="t")
    assert series(figure) == {}
    assert any("no loss values" in text.get_text() for text in figure.axes[0].texts)
    assert png_size(render_loss_plot([], tmp_path / "empty.png", title="t")) == EXPECTED_SIZE


def test_rendering_replaces_the_file_atomically_and_leaves_no_temp_files(tmp_path, monkeypatch):
    dest = tmp_path / "plots" / "loss.png"
    render_loss_plot(real_points(), dest, title="first")
    first = dest.read_bytes()
    seen = []
    real_replace = os.replace

    def watching_replace(src, dst):
        # At the moment of the swap the old complete PNG is still in place.
        seen.append((Path(dst).read_bytes() == first, Path(src).read_bytes()[:8]))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", watching_replace)
    render_loss_plot(long_run(), dest, title="second")
    assert seen == [(True, PNG_SIGNATURE)]
    assert dest.read_bytes() != first
    assert [p.name for p in dest.parent.iterdir()] == ["loss.png"]


def test_failed_render_keeps_the_old_png(tmp_path, monkeypatch):
    dest = tmp_path / "loss.png"
    render_loss_plot(real_points(), dest, title="ok")
    before = dest.read_bytes()
    assert before[:8] == PNG_SIGNATURE
    monkeypatch.setattr(
        "matplotlib.figure.Figure.savefig", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "full"))
    )
    with pytest.raises(OSError):
        render_loss_plot(long_run(), dest, title="broken")
    assert dest.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["loss.png"]


def test_threads_render_at_once(tmp_path):
    errors = []

    def render(index: int) -> None:
        try:
            render_loss_plot(long_run(steps=200 + index), tmp_path / f"{index}.png", title=f"#{index}")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=render, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert all(png_size(tmp_path / f"{i}.png") == EXPECTED_SIZE for i in range(8))


def test_smooth_follows_the_trend_and_keeps_length():
    assert smooth([]) == []
    assert smooth([3.0]) == pytest.approx([3.0])
    values = [10.0] * 5 + [0.0] * 200
    smoothed = smooth(values)
    assert len(smoothed) == len(values)
    assert smoothed[0] == pytest.approx(10.0)
    assert 0 < smoothed[6] < 10 and smoothed[-1] == pytest.approx(0.0, abs=1e-6)


def test_pyplot_is_never_imported():
    # pyplot keeps global figure state, which is not thread-safe in a server.
    code = (
        "import sys; from pathlib import Path; import tempfile\n"
        "from runners.plots import render_loss_plot\n"
        "from runners.llamafactory.progress import Progress\n"
        "render_loss_plot([Progress(step=1, loss=1.0)], Path(tempfile.mkdtemp()) / 'a.png', title='t')\n"
        "print('matplotlib.pyplot' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.stdout.strip() == "False"


def test_unwritable_home_gets_a_private_matplotlib_config_dir(tmp_path):
    # A home that cannot hold directories, even for root: it lies under a regular file.
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    env = {
        k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")
    }
    env["HOME"] = str(blocker / "home")
    code = (
        "import os, tempfile; from pathlib import Path\n"
        "from runners.plots import render_loss_plot\n"
        "from runners.llamafactory.progress import Progress\n"
        "render_loss_plot([Progress(step=1, loss=1.0)], Path(tempfile.mkdtemp()) / 'a.png', title='t')\n"
        "print(os.environ['MPLCONFIGDIR'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    config_dir = Path(result.stdout.strip())
    assert config_dir.is_dir() and str(blocker) not in str(config_dir)
    # matplotlib warns "Matplotlib created a temporary cache directory" when it has to improvise.
    assert "temporary" not in result.stderr, result.stderr


def test_writable_home_is_left_alone(tmp_path):
    env = {
        k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")
    }
    env["HOME"] = str(tmp_path)
    code = "import os, runners.plots; print(os.environ.get('MPLCONFIGDIR', 'unset'))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.stdout.strip() == "unset"
