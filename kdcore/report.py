"""What a finished job hands back: report.json's dict (`build_report`) and the curves a person looks at first.

The report's fields are documented in docs/spec.md; the API returns the dict unchanged.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from kdcore.spec import JobSpec
    from kdcore.teacher_cache import Teacher


def build_report(spec: JobSpec, done: dict[str, Any], teachers: list[Teacher], device: torch.device,
                 precision: str, wall_seconds: float, val_samples: int = 0,
                 train_samples: int | None = None) -> dict[str, Any]:
    """The report from the finished phases' results (`TrainState.done`). val_samples: how many training
    samples were held out for validation (training.validation), train_samples: how many were trained on."""
    s = done["distill"]
    report: dict[str, Any] = {
        "method": spec.distillation.method, "dataset": spec.dataset.name,
        "student": {"architecture": spec.student.architecture, "top1": s["top1"], "top5": s["top5"],
                    "params": s["params"], "size_bytes": s["size_bytes"], "val_top1": s.get("val_top1")},
        "validation": {"samples": val_samples, "train_samples": train_samples, "keep": spec.training.keep},
        "rescues": s.get("rescues", []),
    }
    if "kept_epoch" in s:
        report["student"]["kept_epoch"] = s["kept_epoch"]
    report.update(s.get("extra_students", {}))  # further trained models (the DML peer), by name
    if teachers:
        t_params = [t.params for t in teachers]
        params = sum(p for p in t_params if p) if all(t_params) else None
        sizes = [t.size_bytes for t in teachers]
        report["teacher"] = {**done["teacher"], "params": params,
                             "size_bytes": sum(sizes) if all(sizes) else None}
        if len(teachers) > 1:
            report["teacher"]["count"] = len(teachers)
            report["teacher"]["weights"] = [t.weight for t in spec.teachers]
        report["agreement"] = s["agreement"]
        report["compression"] = round(params / s["params"], 4) if params else None
        report["temperature"] = spec.distillation.temperature
        report["alpha"] = spec.distillation.alpha
        # which path the teacher took: "built" / "hit" (outputs computed once, reused every epoch) or
        # "off (augmentation)" etc. (teacher run at every step)
        report["teacher_cache"] = s.get("teacher_cache")
        report["teacher_precision"] = s.get("teacher_precision", precision)
    if "baseline" in done:
        b = done["baseline"]
        report["baseline"] = {"top1": b["top1"], "top5": b["top5"], "val_top1": b.get("val_top1"),
                              "epochs": b["epochs"], "rescues": b.get("rescues", [])}
        if "kept_epoch" in b:
            report["baseline"]["kept_epoch"] = b["kept_epoch"]
        report["kd_gain"] = round(s["top1"] - b["top1"], 6)
    report["epochs"] = s["epochs"]
    report.update(device=device.type, precision=precision, compile=s.get("compile", "off"),
                  seed=spec.training.seed, wall_seconds=round(wall_seconds, 3))
    return report


def plot_curves(report: dict[str, Any], path: Path) -> None:
    """Test (and validation) top-1 and train loss per epoch for the student (and the baseline, when there is one)."""
    import matplotlib

    matplotlib.use("Agg")  # workers have no display
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    runs = [(f"student ({report.get('method', 'kd')})", report["epochs"])]
    if "baseline" in report:
        runs.append(("baseline (no teacher)", report["baseline"]["epochs"]))
    for label, rows in runs:
        ep = [r["epoch"] for r in rows]
        line, = ax_acc.plot(ep, [r["test_top1"] for r in rows], marker="o", label=f"{label}, test")
        if any(r.get("val_top1") is not None for r in rows):  # what the loop chose by, beside what it reports
            ax_acc.plot(ep, [r.get("val_top1") for r in rows], linestyle=":", marker=".", color=line.get_color(),
                        label=f"{label}, validation")
        ax_loss.plot(ep, [r["train_loss"] for r in rows], marker="o", label=label)
    if "teacher" in report and report["teacher"].get("top1") is not None:
        ax_acc.axhline(report["teacher"]["top1"], color="grey", linestyle="--", label="teacher")
    ax_acc.set(xlabel="epoch", ylabel="top-1", title="accuracy")
    ax_loss.set(xlabel="epoch", ylabel="train loss", title="loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
