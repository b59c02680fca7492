"""SGD and Adam over a population's stacked parameters, each member with its own knobs.

The update of member k is torch.optim.SGD's (momentum, no dampening, L2 weight decay) or
torch.optim.Adam's (L2 weight decay, betas 0.9/0.999, eps 1e-8) as ``train()`` builds them
(dm_tune.train._make_optimizer), with member k's learning rate, weight decay and momentum,
computed by torch's own fused implementation (``torch.optim.sgd.sgd`` / ``torch.optim.adam.adam``
with ``fused=True``) on member k's slices of the stacked tensors. One fused pass matters here:
the stacked tensors outgrow the CPU caches, and the unfused update (about eight elementwise
passes per parameter) cost more than the model's forward and backward on the digits MLP.
When every member has the same knobs (and, for Adam, the same step count), the update is one
fused call on the stacked tensors themselves (the same elementwise update with K times fewer
tensors to dispatch: 10% of a digits-MLP population's time at 2 threads, BENCHMARKS.md).
The learning rate is set every step (``set_lr``), so each member follows its own schedule; a
member whose learning rate is 0 does not move. State is per member: ``member_state(k)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.adam import adam as fused_adam
from torch.optim.sgd import sgd as fused_sgd

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8


class PopulationOptimizer:
    def __init__(self, named_params: list[tuple[str, torch.nn.Parameter]], kind: str,
                 weight_decay: list[float], momentum: list[float]) -> None:
        if kind not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be sgd or adam, got {kind!r}")
        self.kind, self.names = kind, [n for n, _ in named_params]
        self.params = [p for _, p in named_params]
        self.size = self.params[0].shape[0]
        self.weight_decay, self.momentum = list(weight_decay), list(momentum)
        self.lr = [0.0] * self.size
        # Stacked state, zero-initialised: SGD's first step then gives buf = grad, as torch's clone does.
        names = ("momentum_buffer",) if kind == "sgd" else ("exp_avg", "exp_avg_sq")
        self.state = {b: [torch.zeros_like(p, memory_format=torch.contiguous_format) for p in self.params]
                      for b in names}
        # Adam's step count per member and parameter (the fused kernel increments each entry).
        self.steps = torch.zeros(self.size, len(self.params), dtype=torch.float32, device=self.params[0].device)
        self._views = {name: [t.detach().unbind(0) for t in tensors]
                       for name, tensors in [("params", self.params), *self.state.items()]}

    def set_lr(self, lr: list[float]) -> None:
        """Each member's learning rate for the next step; 0 leaves a member where it is."""
        self.lr = list(lr)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        # Members with equal knobs go through torch's fused update together (one call per group);
        # a member with learning rate 0 is left out.
        groups: dict[tuple[float, float, float], list[int]] = {}
        for k in range(self.size):
            if self.lr[k] != 0.0:
                groups.setdefault((self.lr[k], self.weight_decay[k], self.momentum[k]), []).append(k)
        used = [j for j, p in enumerate(self.params) if p.grad is not None]
        if len(groups) == 1 and len(next(iter(groups.values()))) == self.size and len(used) == len(self.params):
            (lr, wd, momentum), = groups
            if self._step_stacked(lr, wd, momentum):
                return
        grads = {j: self.params[j].grad.unbind(0) for j in used}  # type: ignore[union-attr]
        v = self._views
        for (lr, wd, momentum), members in groups.items():
            def pick(name: str) -> list[torch.Tensor]:
                return [v[name][j][k] for k in members for j in used]

            params, grad_list = pick("params"), [grads[j][k] for k in members for j in used]
            if self.kind == "sgd":
                fused_sgd(params, grad_list, pick("momentum_buffer"), fused=True, weight_decay=wd,
                                    momentum=momentum, lr=lr, dampening=0.0, nesterov=False, maximize=False)
            else:
                steps = [self.steps[k, j] for k in members for j in used]
                fused_adam(params, grad_list, pick("exp_avg"), pick("exp_avg_sq"), [], steps, fused=True,
                                      amsgrad=False, beta1=ADAM_BETAS[0], beta2=ADAM_BETAS[1], lr=lr,
                                      weight_decay=wd, eps=ADAM_EPS, maximize=False)

    def _step_stacked(self, lr: float, wd: float, momentum: float) -> bool:
        """Every member with the same knobs and (Adam) the same step count: one fused call on the
        stacked tensors instead of K slices each (the same elementwise update, fewer dispatches:
        BENCHMARKS.md). False (nothing done) when the members' step counts differ."""
        params = [p.detach() for p in self.params]
        grads = [p.grad for p in self.params]
        if self.kind == "sgd":
            fused_sgd(params, grads, self.state["momentum_buffer"], fused=True, weight_decay=wd,
                      momentum=momentum, lr=lr, dampening=0.0, nesterov=False, maximize=False)
            return True
        if not bool((self.steps == self.steps[0]).all()):
            return False
        shared = list(self.steps[0].unbind(0))  # member 0's counters stand for all; copied back below
        fused_adam(params, grads, self.state["exp_avg"], self.state["exp_avg_sq"], [], shared, fused=True,
                   amsgrad=False, beta1=ADAM_BETAS[0], beta2=ADAM_BETAS[1], lr=lr, weight_decay=wd, eps=ADAM_EPS,
                   maximize=False)
        self.steps.copy_(self.steps[0].expand_as(self.steps))
        return True

    def member_state(self, k: int) -> dict[str, Any]:
        """Member k's optimiser state: Adam's step counts and, per parameter key, its buffers."""
        return {"steps": self.steps[k].clone(),
                "buffers": {name: {b: tensors[j][k].clone() for b, tensors in self.state.items()}
                            for j, name in enumerate(self.names)}}

    @torch.no_grad()
    def load_member_state(self, k: int, member: dict[str, Any]) -> None:
        self.steps[k].copy_(member["steps"])
        for j, name in enumerate(self.names):
            for b, value in member["buffers"][name].items():
                self.state[b][j][k].copy_(value)

    @torch.no_grad()
    def zero_member(self, k: int) -> None:
        self.steps[k].zero_()
        for tensors in self.state.values():
            for t in tensors:
                t[k].zero_()
