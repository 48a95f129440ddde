"""Pictures of a finished job: the per-epoch curves a person looks at first."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_curves(report: dict[str, Any], path: Path) -> None:
    """Test top-1 and train loss per epoch for the student (and the baseline, when there is one)."""
    import matplotlib

    matplotlib.use("Agg")  # workers have no display
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    runs = [(f"student ({report.get('method', 'kd')})", report["epochs"])]
    if "baseline" in report:
        runs.append(("baseline (no teacher)", report["baseline"]["epochs"]))
    for label, rows in runs:
        ep = [r["epoch"] for r in rows]
        ax_acc.plot(ep, [r["test_top1"] for r in rows], marker="o", label=label)
        ax_loss.plot(ep, [r["train_loss"] for r in rows], marker="o", label=label)
    if "teacher" in report and report["teacher"].get("top1") is not None:
        ax_acc.axhline(report["teacher"]["top1"], color="grey", linestyle="--", label="teacher")
    ax_acc.set(xlabel="epoch", ylabel="test top-1", title="accuracy")
    ax_loss.set(xlabel="epoch", ylabel="train loss", title="loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
