"""Human-facing outputs: the Pareto table, pareto.png and report.md."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from core.budget import Budget
from core.metric import ACCURACY, MetricSpec
from core.result import STATUS_STOPPED
from envs.evaluator import LatencyCheck
from search.archive import Trial
from search.export import Dropped, ExportedModel


@dataclass(frozen=True)
class Baseline:
    """The uncompressed model, packed at fp32 and measured like every candidate."""

    val_accuracy: float
    """Validation score (the task metric, higher is better: :class:`core.metric.MetricSpec`)."""
    test_accuracy: float
    """Test score."""
    size_bytes: int
    """Bytes of the fp32 packed file."""
    latency_ms: float
    """Latency on the device profile."""
    macs: int
    """MACs per sample."""
    params: int
    """Parameters."""
    metric: MetricSpec = ACCURACY
    """The task's metric."""

    def metric_text(self, split: str) -> str:
        """``test accuracy 0.9780`` or ``val bpc 2.1034``: the metric's own name and value on ``split``."""
        score = self.test_accuracy if split == "test" else self.val_accuracy
        return f"{split} {self.metric.name} {self.metric.value(score):.4f}"

    @property
    def text(self) -> str:
        """Test and validation metric (``test accuracy 0.9780, val accuracy 0.9760``)."""
        return f"{self.metric_text('test')}, {self.metric_text('val')}"


def _size(nbytes: float) -> str:
    if nbytes >= 1e6:
        return f"{nbytes / 1e6:.2f} MB"
    if nbytes >= 1e3:
        return f"{nbytes / 1e3:.1f} KB"
    return f"{int(nbytes)} B"


def _budget_text(budget: Budget) -> str:
    size = _size(budget.size_bytes) if budget.size_bytes else "none"
    latency = f"{budget.latency_ms:g} ms" if budget.latency_ms else "none"
    return f"size <= {size}, latency <= {latency}"


def pareto_table(models: Sequence[ExportedModel]) -> str:
    """A Markdown table of the exported models (with the latency model's prediction when there is one, and
    each model's runtime when they run on different ones)."""
    predicted = any(m.predicted_latency_ms is not None for m in models)
    runtimes = len({m.runtime for m in models}) > 1
    extra = (" predicted (ms) |" if predicted else "") + (" runtime |" if runtimes else "")
    short = models[0].metric.short if models else ACCURACY.short
    lines = [
        f"| rank | test {short} | val {short} | size | ratio | latency (ms) |{extra} MMACs | file |",
        "|---:|---:|---:|---:|---:|---:|" + ("---:|" if predicted else "") + ("---|" if runtimes else "") + "---:|---|",
    ]
    for m in models:
        cell = " - |" if predicted else ""
        if m.predicted_latency_ms is not None:
            cell = f" {m.predicted_latency_ms:.2f} |"
        if runtimes:
            cell += f" {m.runtime} |"
        lines.append(
            f"| {m.rank} | {m.metric.value(m.test_accuracy):.4f} | {m.metric.value(m.val_accuracy):.4f} "
            f"| {_size(m.size_bytes)} "
            f"| {m.compression_ratio:.1f}x | {m.latency_ms:.2f} |{cell} {m.macs / 1e6:.2f} | {m.model_file} |"
        )
    return "\n".join(lines)


def _plain_lines(models: Sequence[ExportedModel]) -> list[str]:
    """Which exported models hold the policy without the final fine-tune (it scored lower on validation, or
    ``finetune_epochs`` is 0)."""
    plain = [str(m.rank) for m in models if not m.final_finetune]
    if not plain:
        return []
    return [f"Without the final fine-tune (the same policy scored higher on validation without it, or there was "
            f"none): rank {', '.join(plain)}.", ""]


def _predictor_lines(checks: Sequence[LatencyCheck], models: Sequence[ExportedModel]) -> list[str]:
    """The latency model's error over the candidates run for real, and over the exported models."""
    exported = [abs(m.predicted_latency_ms - m.latency_ms) / m.latency_ms
                for m in models if m.predicted_latency_ms is not None]
    errors = [c.relative_error for c in checks]
    if not errors and not exported:
        return []
    parts = []
    if errors:
        parts.append(f"median absolute error {100 * statistics.median(errors):.1f}% over {len(errors)} "
                     f"candidates also run for real")
    if exported:
        parts.append(f"{100 * statistics.median(exported):.1f}% over the {len(exported)} exported models")
    return [f"- Latency model: {'; '.join(parts)}", ""]


def plot_front(
    path: Path, trials: Sequence[Trial], models: Sequence[ExportedModel], budget: Budget,
    metric: MetricSpec = ACCURACY,
) -> None:
    """The task metric against size, latency as colour, budgets drawn; written to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ok = [t for t in trials if t.result.ok]
    infeasible = [t for t in ok if not t.feasible]
    feasible = [t for t in ok if t.feasible]
    latencies = [t.result.latency_ms for t in ok] + [m.latency_ms for m in models]
    vmin, vmax = (min(latencies), max(latencies)) if latencies else (0.0, 1.0)
    if infeasible:
        ax.scatter([t.result.size_bytes / 1e6 for t in infeasible],
                   [metric.value(t.result.val_accuracy) for t in infeasible],
                   marker="x", c="lightgray", label="over budget (search, val)")
    if feasible:
        ax.scatter([t.result.size_bytes / 1e6 for t in feasible],
                   [metric.value(t.result.val_accuracy) for t in feasible],
                   c=[t.result.latency_ms for t in feasible], cmap="viridis", vmin=vmin, vmax=vmax, s=18,
                   alpha=0.6, label="within budget (search, val)")
    if models:
        points = ax.scatter([m.size_bytes / 1e6 for m in models], [metric.value(m.test_accuracy) for m in models],
                            c=[m.latency_ms for m in models], cmap="viridis", vmin=vmin, vmax=vmax, s=90,
                            marker="*", edgecolors="black", label="exported Pareto (test)")
        fig.colorbar(points, ax=ax, label="latency (ms)")
    if budget.size_bytes:
        ax.axvline(
            budget.size_bytes / 1e6, color="red", linestyle="--", label=f"size budget {_size(budget.size_bytes)}"
        )
    title = f"{metric.name} vs size"
    if budget.latency_ms:
        title += f" (latency target {budget.latency_ms:g} ms; points over it are grey x)"
    ax.set_title(title, fontsize=9)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("packed size (MB, log scale)")
    ax.set_ylabel(metric.text)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(
    path: Path,
    *,
    title: str,
    config_yaml: str,
    budget: Budget,
    device_text: str,
    baseline: Baseline,
    trials: Sequence[Trial],
    models: Sequence[ExportedModel],
    dropped: Sequence[Dropped],
    search_seconds: float,
    export_seconds: float,
    latency_checks: Sequence[LatencyCheck] = (),
    latency_notes: Sequence[str] = (),
    learned_notes: Sequence[str] = (),
) -> None:
    """Writes report.md (``latency_notes``: lines on the target and the machine's timing noise; ``learned_notes``:
    one line per learned-sparsity training)."""
    ok = sum(t.result.ok for t in trials)
    feasible = sum(t.feasible for t in trials)
    stopped = sum(t.result.status == STATUS_STOPPED for t in trials)
    failed = [t for t in trials if not t.result.ok and t.result.status != STATUS_STOPPED]
    lines = [
        f"# {title}",
        "",
        f"- Budget: {_budget_text(budget)}",
        f"- Device: {device_text}",
        f"- Trials: {len(trials)} ({ok} ok, {feasible} within budget, {len(failed)} failed"
        f"{f', {stopped} stopped early by ASHA' if stopped else ''});"
        f" search {search_seconds:.1f} s, final fine-tune and export {export_seconds:.1f} s",
        *(f"- {note}" for note in latency_notes),
        *(f"- {note}" for note in learned_notes),
        "",
        *_predictor_lines(latency_checks, models),
        "## Uncompressed baseline",
        "",
        f"{baseline.text}, "
        f"fp32 packed file {_size(baseline.size_bytes)}, latency {baseline.latency_ms:.2f} ms, "
        f"{baseline.macs / 1e6:.2f} MMACs, {baseline.params} parameters",
        "",
        f"## Pareto front (after the final fine-tune; test {baseline.metric.name} is reported, never searched on)",
        "",
        pareto_table(models) if models else "No candidate met the budget. Loosen the budget or run more trials.",
        "",
        *_plain_lines(models),
        "![pareto](pareto.png)",
        "",
    ]
    if dropped:
        lines += ["## Candidates dropped at export", ""]
        lines += [f"- trial {d.trial}: {d.reason}" for d in dropped]
        lines.append("")
    if failed:
        lines += ["## Failed candidates", ""]
        lines += [f"- trial {t.number}: {t.result.error}" for t in failed[:20]]
        lines.append("")
    lines += ["## Configuration", "", "```yaml", config_yaml.rstrip(), "```", ""]
    path.write_text("\n".join(lines))
