"""Divergence without NaN: a run whose loss stays finite but whose student falls to chance.

Too large a step sends a network to a state where it predicts one class (dead units, saturated
logits); the loss stays finite, so the non-finite check never fires, and the job would "succeed" with
a useless student. Measured: KD at T=20 with SGD lr 0.1 sent an 800-800 MNIST student to chance,
since the soft term is scaled by T^2. The rules look at the per-epoch history only (no per-step cost):

- fell: accuracy was at least halfway from chance to perfect, then stayed near chance (within
  a tenth of the way) for `FELL_EPOCHS` epochs in a row;
- blew up: near chance for `BLEW_UP_EPOCHS` epochs in a row while the epoch training loss has been at
  least `BLOW_UP_FACTOR` times its lowest value (a student that is merely slow to learn, or data with
  random labels, sits near chance with a flat loss and is left alone);
- stuck below a good teacher: a distilled student near chance for `BLEW_UP_EPOCHS` epochs in a row
  while its teacher scores at least halfway from chance to perfect on the same test split. The data
  is learnable (the teacher learned it), so the step is what keeps the student at chance: the MNIST
  case above, where the student never left chance and its loss stayed flat.
"""
from __future__ import annotations

from typing import Any

from kdcore.errors import Diverged

FELL_EPOCHS = 2
BLEW_UP_EPOCHS = 3
BLOW_UP_FACTOR = 10.0


def check_divergence(history: list[dict[str, Any]], num_classes: int, lr: float, temperature: float | None,
                     teacher_top1: float | None = None, accs: list[float] | None = None) -> None:
    """Raises Diverged when the history (rows with epoch, train_loss, test_top1) shows a diverged run.
    accs: the per-epoch accuracies to judge by instead of test_top1 (the loop passes validation top-1)."""
    if num_classes < 2 or not history:
        return
    chance = 1.0 / num_classes
    near = chance + 0.1 * (1.0 - chance)
    good = chance + 0.5 * (1.0 - chance)
    accs = [float(a) for a in accs] if accs is not None else [float(r["test_top1"]) for r in history]
    losses = [float(r["train_loss"]) for r in history]
    epoch = history[-1]["epoch"]
    advice = f"lower training.lr (now {lr:g})"
    if temperature is not None and temperature > 1:
        advice += (f"; the soft term is scaled by T^2 = {temperature ** 2:g}, so distillation at T={temperature:g} "
                   "needs a smaller step than training on labels alone")
    if len(accs) > FELL_EPOCHS and max(accs[:-FELL_EPOCHS]) >= good and all(a <= near for a in accs[-FELL_EPOCHS:]):
        raise Diverged(f"training diverged: accuracy fell from {max(accs):.3f} to {accs[-1]:.3f} by epoch "
                       f"{epoch} (chance is {chance:.3f}); {advice}")
    if (teacher_top1 is not None and teacher_top1 >= good and len(accs) >= BLEW_UP_EPOCHS
            and all(a <= near for a in accs[-BLEW_UP_EPOCHS:])):
        raise Diverged(f"training diverged: accuracy has stayed at chance ({accs[-1]:.3f}, chance {chance:.3f}) "
                       f"for {BLEW_UP_EPOCHS} epochs up to epoch {epoch} although the teacher scores "
                       f"{teacher_top1:.3f} on the same data; {advice}")
    low = min(losses)
    if (len(accs) >= BLEW_UP_EPOCHS and all(a <= near for a in accs[-BLEW_UP_EPOCHS:])
            and low > 0 and max(losses) >= BLOW_UP_FACTOR * low):
        raise Diverged(f"training diverged: the training loss reached {max(losses):.4g} ({max(losses) / low:.0f}x "
                       f"its lowest epoch value) and accuracy has stayed at chance ({accs[-1]:.3f}, chance "
                       f"{chance:.3f}) for {BLEW_UP_EPOCHS} epochs up to epoch {epoch}; {advice}")
