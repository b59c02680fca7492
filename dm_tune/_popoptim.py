"""SGD and Adam over a population's stacked parameters, each member with its own knobs.

The update of member k is torch.optim.SGD's (momentum, no dampening, L2 weight decay) or
torch.optim.Adam's (L2 weight decay, betas 0.9/0.999, eps 1e-8) as ``train()`` builds them
(dm_tune.train._make_optimizer), with member k's learning rate, weight decay and momentum. The
learning rate is set every step (``set_lr``), so each member follows its own schedule; a member
whose learning rate is 0 does not move. State is per member: ``member_state(k)``.
"""

from __future__ import annotations

from typing import Any

import torch

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8


class PopulationOptimizer:
    def __init__(self, named_params: list[tuple[str, torch.nn.Parameter]], kind: str,
                 weight_decay: list[float], momentum: list[float]) -> None:
        if kind not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be sgd or adam, got {kind!r}")
        self.kind, self.names = kind, [n for n, _ in named_params]
        self.params = [p for _, p in named_params]
        device = self.params[0].device
        self.size = self.params[0].shape[0]
        self.weight_decay = torch.tensor(weight_decay, dtype=torch.float64, device=device)
        self.momentum = torch.tensor(momentum, dtype=torch.float64, device=device)
        self.lr = torch.zeros(self.size, dtype=torch.float64, device=device)
        self.steps = 0
        self.state: list[dict[str, torch.Tensor]] = [{} for _ in self.params]

    def set_lr(self, lr: list[float]) -> None:
        self.lr = torch.tensor(lr, dtype=torch.float64).to(self.lr.device, non_blocking=True)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        for p, state in zip(self.params, self.state):
            if p.grad is None:
                continue
            shape = (-1,) + (1,) * (p.dim() - 1)
            lr, wd = _per_member(self.lr, shape, p), _per_member(self.weight_decay, shape, p)
            grad = p.grad + wd * p
            if self.kind == "sgd":
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = grad.clone()
                else:
                    buf.mul_(_per_member(self.momentum, shape, p)).add_(grad)
                p.sub_(lr * buf)
                continue
            beta1, beta2 = ADAM_BETAS
            if not state:
                state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            bias1, bias2 = 1 - beta1 ** self.steps, 1 - beta2 ** self.steps
            denom = (exp_avg_sq.sqrt() / bias2 ** 0.5).add_(ADAM_EPS)
            p.sub_((lr / bias1) * exp_avg / denom)

    def member_state(self, k: int) -> dict[str, Any]:
        """Member k's optimiser state: step count and, per parameter key, its buffers."""
        return {"steps": self.steps,
                "buffers": {name: {b: t[k].clone() for b, t in state.items()}
                            for name, state in zip(self.names, self.state)}}

    @torch.no_grad()
    def load_member_state(self, k: int, member: dict[str, Any]) -> None:
        self.steps = int(member["steps"])
        for name, p, state in zip(self.names, self.params, self.state):
            for b, value in member["buffers"].get(name, {}).items():
                if b not in state:
                    state[b] = torch.zeros_like(p)
                state[b][k].copy_(value)

    @torch.no_grad()
    def zero_member(self, k: int) -> None:
        for state in self.state:
            for t in state.values():
                t[k].zero_()


def _per_member(values: torch.Tensor, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    return values.to(like.dtype).view(shape)
