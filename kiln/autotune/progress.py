"""Showing a tuning run: a live ``rich`` table per task, and the tuning curve as a PNG."""
from __future__ import annotations

from pathlib import Path


def _fmt_flops(n: int) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def table(states, total: int, budget: int):
    from rich.table import Table

    from kiln.autotune.tuner import estimated_latency

    t = Table(title=f"kiln tune: {total}/{budget} trials, tuned kernels "
                    f"{estimated_latency(states) * 1e3:.3f} ms per inference")
    for col in ("task", "FLOPs", "weight", "trials", "best GFLOP/s", "latency (ms)", "untuned (ms)"):
        t.add_column(col, justify="left" if col == "task" else "right")
    for s in states:
        # the verified choice and the default re-timed beside it once verification ran;
        # the search's best and the first measurement of the default until then
        now, untuned = s.current, s.reference
        gflops = f"{s.task.flops / now / 1e9:.2f}" if now else "-"
        lat = f"{now * 1e3:.4f}" if now else "-"
        ref = f"{untuned * 1e3:.4f}" if untuned else ("failed" if s.failed else "-")
        t.add_row(s.task.name, _fmt_flops(s.task.flops), str(s.task.weight), str(s.trials), gflops, lat, ref)
    return t


class LiveTable:
    """A progress callback for ``tune``: redraws the table after every batch."""

    def __init__(self, console=None):
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self.live = None

    def __call__(self, states, total, budget):
        from rich.live import Live

        if self.live is None:
            self.live = Live(table(states, total, budget), console=self.console, auto_refresh=False)
            self.live.start()
        else:
            self.live.update(table(states, total, budget), refresh=True)

    def close(self):
        if self.live is not None:
            self.live.stop()


def plot_curve(result, path) -> Path:
    """Estimated latency of the tuned kernels per inference against trials, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [t for t, _ in result.curve]
    ys = [lat * 1e3 for _, lat in result.curve]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.step(xs, ys, where="post", label="tuned")
    ax.axhline(result.untuned_latency * 1e3, color="gray", linestyle="--", label="untuned")
    ax.set_xlabel("trials")
    ax.set_ylabel("tuned kernels, ms per inference")
    ax.set_title("kiln tune")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = ["LiveTable", "table", "plot_curve"]
