"""Adam whose whole update is one fused kernel call over flat buffers.

``torch.optim.Adam(fused=True)`` does ENet's arithmetic (365,353 weights in
367 parameters) in about 0.1 ms on 2 CPU cores, but spends 3-4 ms a step
around it: Python that groups the 367 parameters by device and dtype, one
step counter per parameter incremented one by one, and per-tensor dispatch
inside the kernel. :class:`FlatAdam` lays every parameter, both of its
moments and its step counter out as views into one flat buffer each (the
parameters keep their shapes and strides, channels-last included), copies
the gradients into a flat buffer in one call and updates everything with
one call of the same fused kernel. ``python scripts/adam_bench.py`` prints
the figures.

It is a :class:`torch.optim.Adam`: same hyperparameters, same
``state_dict`` layout (a checkpoint saved by either loads into the other),
same arithmetic element by element. Whatever the flat step cannot take
(a parameter without a gradient this step, a ``closure``, a
:class:`torch.amp.GradScaler`'s scale, several parameter groups, mixed
devices or dtypes, AMSGrad, a tensor learning rate, step counters that
differ between parameters) runs torch's own step on the same state views.
"""

from __future__ import annotations

import torch

__all__ = ["FlatAdam"]

_ALIGN = 16  # elements: each parameter starts on a 64-byte boundary (float32)


def _dense(t: torch.Tensor) -> bool:
    """True when ``t``'s elements fill ``t.numel()`` consecutive slots (any dense layout)."""
    if t.is_contiguous():
        return True
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)


def _group_takes(group: dict) -> bool:
    """Whether the flat step can take this group's options (else torch's step)."""
    return bool(group.get("fused")) and not (
        group.get("amsgrad") or group.get("differentiable") or group.get("capturable")
        or torch.is_tensor(group["lr"]) or any(torch.is_tensor(b) for b in group["betas"]))


def _zeros(n: int, like: torch.Tensor) -> torch.Tensor:
    """``n`` zeros of ``like``'s dtype and device; on the CPU zeroed by numpy, not by torch.

    torch fills a CPU tensor this large on an OpenMP team of the calling
    thread. An optimiser is often made on another thread than the one that
    trains (a GUI's), and a second thread's team halves training speed on
    2 cores (see :mod:`napari_sizeloss.compute_thread`): so no team here.
    The per-parameter copies below are each under torch's parallel grain
    (32,768 elements; ENet's largest parameter has 9,216).
    """
    if like.device.type == "cpu" and like.dtype in (torch.float16, torch.float32, torch.float64):
        out = torch.empty(n, dtype=like.dtype)  # torch's allocation (64-byte aligned), numpy's memset
        out.numpy().fill(0)
        return out
    return torch.zeros(n, dtype=like.dtype, device=like.device)


class FlatAdam(torch.optim.Adam):
    """:class:`torch.optim.Adam` (fused) over flat buffers; see the module docstring.

    Making one moves the parameters' values into a new flat buffer (their
    ``.data`` become views of it): make it after moving the model to its
    device and memory format. Should something later replace a parameter's
    ``.data`` (``model.to(...)``), the next step lays the buffers out again.
    """

    def __init__(self, params, lr: float = 1e-3, **kwargs) -> None:
        kwargs.setdefault("fused", True)
        super().__init__(params, lr=lr, **kwargs)
        self._flat: dict | None = None
        self._flatten()

    # ----------------------------------------------------------------- layout
    def _eligible(self) -> bool:
        if len(self.param_groups) != 1:
            return False
        group = self.param_groups[0]
        params = group["params"]
        if not params or not _group_takes(group):
            return False
        first = params[0]
        if not first.is_floating_point():
            return False
        if len({id(p) for p in params}) != len(params):
            return False
        return all(p.device == first.device and p.dtype == first.dtype and not p.is_sparse and _dense(p)
                   for p in params)

    @torch.no_grad()
    def _flatten(self) -> None:
        """Move parameters, moments and step counters into flat buffers (or give up: torch's step)."""
        self._flat = None
        if not self._eligible():
            return
        params = self.param_groups[0]["params"]
        first = params[0]
        offsets, total = [], 0
        for p in params:
            offsets.append(total)
            total += -(-p.numel() // _ALIGN) * _ALIGN
        values, grads, means, squares = (_zeros(total, first) for _ in range(4))
        steps = torch.zeros(len(params), dtype=torch.float32, device=first.device)

        def view(flat: torch.Tensor, p: torch.Tensor, offset: int) -> torch.Tensor:
            return flat.as_strided(p.shape, p.stride(), offset)

        grad_views = []
        for i, (p, offset) in enumerate(zip(params, offsets, strict=True)):
            old = self.state.get(p) or {}
            mean, square = view(means, p, offset), view(squares, p, offset)
            if "exp_avg" in old:
                mean.copy_(old["exp_avg"])
                square.copy_(old["exp_avg_sq"])
                steps[i] = old["step"].to(torch.float32) if torch.is_tensor(old["step"]) else float(old["step"])
            self.state[p] = {"step": steps[i], "exp_avg": mean, "exp_avg_sq": square}
            value = view(values, p, offset)
            value.copy_(p)
            p.data = value
            grad_views.append(view(grads, p, offset))
        # one shared counter is right only while every parameter has taken the same number of steps
        uniform = bool((steps == steps[0]).all())
        self._flat = {"params": list(params), "group_params": params, "values": values, "grads": grads, "means": means,
                      "squares": squares, "steps": steps, "step": steps[0], "grad_views": grad_views,
                      "ptrs": [p.data_ptr() for p in params], "uniform": uniform}

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's load, then the loaded moments and counters copied into flat buffers."""
        super().load_state_dict(state_dict)
        self._flatten()

    # ------------------------------------------------------------------- step
    def _flat_grads(self) -> list[torch.Tensor] | None:
        """The gradients when the flat step can take this step, else None."""
        flat = self._flat
        if flat is None or getattr(self, "grad_scale", None) is not None \
                or getattr(self, "found_inf", None) is not None:
            return None
        if len(self.param_groups) != 1 or self.param_groups[0]["params"] is not flat["group_params"] \
                or len(flat["group_params"]) != len(flat["params"]):
            self._flatten()  # add_param_group or a hand-edited group: lay out again (or give up)
            flat = self._flat
            if flat is None:
                return None
        params = flat["params"]
        if [p.data_ptr() for p in params] != flat["ptrs"]:
            self._flatten()  # a parameter's .data was replaced (model.to, ...)
            flat = self._flat
            if flat is None:
                return None
        if not flat["uniform"]:
            return None
        grads = [p.grad for p in params]
        if any(g is None or g.is_sparse or g.dtype != flat["grads"].dtype for g in grads):
            return None
        if not _group_takes(self.param_groups[0]):  # options changed since the layout
            return None
        return grads

    @torch.no_grad()
    def step(self, closure=None):
        """One Adam update of every parameter; returns ``closure()``'s loss when given one."""
        grads = None if closure is not None else self._flat_grads()
        if grads is None:
            loss = super().step(closure)
            if self._flat is not None and self._flat["uniform"]:
                # torch's step may have skipped parameters without gradients
                steps = self._flat["steps"]
                self._flat["uniform"] = bool((steps == steps[0]).all())
            return loss
        flat, group = self._flat, self.param_groups[0]
        torch._foreach_copy_(flat["grad_views"], grads)
        flat["steps"].add_(1)
        beta1, beta2 = group["betas"]
        update = torch._fused_adamw_ if group.get("decoupled_weight_decay") else torch._fused_adam_
        update([flat["values"]], [flat["grads"]], [flat["means"]], [flat["squares"]], [], [flat["step"]],
               lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
               amsgrad=False, maximize=group["maximize"])
        # the parameters changed through the flat buffer: tell autograd, as in-place updates would
        torch.autograd.graph.increment_version(flat["params"])
        return None
