"""An exponential moving average of a network's weights (Polyak averaging).

With ``TrainConfig(ema_decay=...)`` (opt-in; ``train --ema-decay``) the
trainer predicts with the average rather than with the last step's weights:
over the last few dozen steps of a round the weights still move with each
batch of 8 crops, and so does the mask; the average moves less. On 16 demo
cases it left the 3D Dice where it was (``scripts/average_bench.py``; see
``docs/benchmarks.md``, "Predicting with averaged weights").
"""

from __future__ import annotations

import copy

import torch
from torch import nn

#: With the warm-up below, the n-th update uses ``min(decay, (1 + n) / (10 + n))``:
#: the first steps' average stays close to the newest weights instead of lagging
#: at the initialisation.
WARMUP = 10


class WeightAverage:
    """A copy of ``model`` whose weights track an exponential moving average of ``model``'s.

    Parameters
    ----------
    model : nn.Module
        The trained network. The copy is made now (same device and memory
        layout) and counts as the first update.
    decay : float
        In (0, 1): after the warm-up, each :meth:`update` keeps ``decay`` of
        the average and adds ``1 - decay`` of the model (0.95: an average over
        about the last 20 steps).

    Notes
    -----
    Floating-point parameters and buffers (batch norm's running mean and
    variance) are averaged; other buffers (batch norm's step counter) are
    copied. The copy never trains: its gradients are off and it stays in
    eval mode.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.model = copy.deepcopy(model)
        for p in self.model.parameters():
            p.grad = None
            p.requires_grad_(False)
        self.model.eval()
        self.updates = 1
        own = [*self.model.parameters(), *self.model.buffers()]
        theirs = [t.detach() for t in (*model.parameters(), *model.buffers())]
        pairs = list(zip(own, theirs, strict=True))
        # averaged in place: the copy's floating-point tensors and the model's (detached views, made once)
        self._mine = [a for a, _ in pairs if a.is_floating_point()]
        self._theirs = [b for a, b in pairs if a.is_floating_point()]
        self._others = [(a, b) for a, b in pairs if not a.is_floating_point()]

    def weight(self) -> float:
        """The share of the model in the next update: ``1 - min(decay, (1 + n) / (10 + n))``."""
        n = self.updates + 1
        return 1.0 - min(self.decay, (1 + n) / (WARMUP + n))

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the model's current weights (after an optimiser step)."""
        if self._mine:
            torch._foreach_lerp_(self._mine, self._theirs, self.weight())
        for a, b in self._others:
            a.copy_(b)
        self.updates += 1
