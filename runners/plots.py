"""Loss curves as PNGs for Slack, drawn without pyplot so a server can render from many threads."""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from pathlib import Path


def _is_writable_dir(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            return True
    except OSError:
        return False


def _ensure_matplotlib_config_dir() -> None:
    # matplotlib keeps its font cache under ~/.cache/matplotlib (config under ~/.config); a service
    # user often has no writable home, and then every process rebuilds the cache (seconds) and warns.
    if os.environ.get("MPLCONFIGDIR"):
        return
    home = Path(os.path.expanduser("~"))
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache")
    if _is_writable_dir(config_home / "matplotlib") and _is_writable_dir(cache_home / "matplotlib"):
        return
    fallback = Path(tempfile.gettempdir()) / f"tunebot-matplotlib-{os.getuid()}"
    fallback.mkdir(mode=0o700, exist_ok=True)
    os.environ["MPLCONFIGDIR"] = str(fallback)


_ensure_matplotlib_config_dir()

from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .llamafactory.progress import Progress  # noqa: E402

FIGURE_SIZE_IN = (8.0, 4.5)
DPI = 120
TRAIN_COLOR = "#1f77b4"
EVAL_COLOR = "#d62728"


def smooth(values: list[float]) -> list[float]:
    """Exponential moving average weighted like LLaMA-Factory's own training_loss.png (the more
    points, the stronger the smoothing), bias-corrected as TensorBoard does so the line does not
    cling to the first value."""
    if not values:
        return []
    weight = 1.8 * (1 / (1 + math.exp(-0.05 * len(values))) - 0.5)
    smoothed = []
    running = 0.0
    for index, value in enumerate(values):
        running = running * weight + (1 - weight) * value
        smoothed.append(running / (1 - weight ** (index + 1)))
    return smoothed


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def build_loss_figure(points: list[Progress], *, title: str, subtitle: str | None = None) -> Figure:
    """The loss plot as a Figure (exposed so tests can inspect its series)."""
    train = [(p.step, p.loss) for p in points if _finite(p.loss)]
    evals = [(p.step, p.eval_loss) for p in points if _finite(p.eval_loss)]
    total = max((p.total for p in points if p.total), default=None)

    figure = Figure(figsize=FIGURE_SIZE_IN, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    figure.suptitle(title, fontsize=12, fontweight="bold")
    if subtitle:
        axes.set_title(subtitle, fontsize=9, color="#555555")

    if train:
        steps, losses = zip(*train, strict=True)
        # Few points: show them plainly; many: faint dots under the smoothed line.
        few = len(train) < 50
        axes.scatter(
            steps,
            losses,
            s=18 if few else 10,
            color=TRAIN_COLOR,
            alpha=0.55 if few else 0.3,
            linewidths=0,
            label=f"train loss (last {losses[-1]:.4g})",
            gid="train-raw",
        )
        axes.plot(
            steps,
            smooth(list(losses)),
            color=TRAIN_COLOR,
            linewidth=2,
            marker="o" if len(train) == 1 else None,
            label="train loss, smoothed",
            gid="train-smoothed",
        )
    if evals:
        steps, losses = zip(*evals, strict=True)
        axes.plot(
            steps,
            losses,
            color=EVAL_COLOR,
            marker="o",
            markersize=5,
            linewidth=1.5,
            label=f"eval loss (last {losses[-1]:.4g})",
            gid="eval",
        )
    if not train and not evals:
        axes.text(
            0.5,
            0.5,
            "no loss values logged yet",
            transform=axes.transAxes,
            ha="center",
            va="center",
            color="#777777",
            fontsize=11,
        )

    all_steps = [step for step, _ in train + evals]
    if total and total > 0:
        # Leave room for the steps still to come, so a live plot shows how far along the run is.
        right = max(total, max(all_steps, default=0))
        axes.set_xlim(0, right + max(0.5, right * 0.015))  # room for the last marker
    elif len(set(all_steps)) == 1:
        axes.set_xlim(all_steps[0] - 1, all_steps[0] + 1)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.grid(True, alpha=0.3)
    if train or evals:
        axes.legend(loc="upper right", fontsize=9, framealpha=0.9)
    return figure


def render_loss_plot(points: list[Progress], dest: Path, *, title: str, subtitle: str | None = None) -> Path:
    """Draw train (raw + smoothed) and eval loss to a PNG at `dest`, replacing it atomically."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    figure = build_loss_figure(points, title=title, subtitle=subtitle)
    fd, temp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            figure.savefig(handle, format="png", dpi=DPI)
        os.chmod(temp_name, 0o644)  # mkstemp makes 0600; other readers (a web server) may need it
        os.replace(temp_name, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    return dest
