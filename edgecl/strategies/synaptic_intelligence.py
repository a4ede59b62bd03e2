"""Synaptic Intelligence (Zenke et al. 2017): per-parameter importance from the loss path.

During an update, each parameter's contribution to the loss decrease is accumulated as
``omega += -grad * delta``. At the update's end the importance grows by
``omega / (total_change**2 + xi)``, clipped at ``max_importance`` as AR1*'s code does so that
a few parameters cannot freeze the head. The penalty is ``strength * sum(I * (p - p_old)**2)``.
"""

from __future__ import annotations

import torch
from torch import nn

from edgecl._state import tensor_entry


class SynapticIntelligence:
    """SI state for a fixed set of named parameters."""

    def __init__(self, parameters: dict[str, nn.Parameter], *, strength: float,
                 xi: float = 1e-3, max_importance: float = 1.0) -> None:
        self.strength = strength
        self.xi = xi  # damping: parameters that barely moved are not infinitely important
        self.max_importance = max_importance
        self._params = parameters
        self.importance = {n: torch.zeros_like(p) for n, p in parameters.items()}
        self.anchor = {n: p.detach().clone() for n, p in parameters.items()}
        self._path = {n: torch.zeros_like(p) for n, p in parameters.items()}
        self._start = {n: p.detach().clone() for n, p in parameters.items()}
        self._before_step = {n: p.detach().clone() for n, p in parameters.items()}

    def begin(self) -> None:
        for n, p in self._params.items():
            self._path[n].zero_()
            self._start[n].copy_(p.detach())
            self._before_step[n].copy_(p.detach())

    def penalty(self) -> torch.Tensor | None:
        if self.strength == 0:
            return None
        total = sum(((p - self.anchor[n]) ** 2 * self.importance[n]).sum()
                    for n, p in self._params.items())
        return self.strength * total

    def after_step(self) -> None:
        """Call after the optimizer step; ``p.grad`` still holds the gradient it used.

        The path integral uses the gradient of the task loss alone (as Zenke et al. do), so
        the penalty's own gradient, 2 * strength * I * (p_before - anchor), is taken out.
        """
        with torch.no_grad():
            for n, p in self._params.items():
                if p.grad is not None:
                    before = self._before_step[n]
                    task_grad = p.grad - 2 * self.strength * self.importance[n] * (
                        before - self.anchor[n])
                    self._path[n].sub_(task_grad * (p.detach() - before))
                self._before_step[n].copy_(p.detach())

    def end(self) -> None:
        with torch.no_grad():
            for n, p in self._params.items():
                change = p.detach() - self._start[n]
                gain = self._path[n].clamp(min=0) / (change ** 2 + self.xi)
                self.importance[n].add_(gain).clamp_(max=self.max_importance)
                self.anchor[n].copy_(p.detach())

    def tensors(self) -> list[torch.Tensor]:
        return [*self.importance.values(), *self.anchor.values(), *self._path.values(),
                *self._start.values(), *self._before_step.values()]

    def state_dict(self) -> dict[str, torch.Tensor]:
        groups = {"importance": self.importance, "anchor": self.anchor, "path": self._path,
                  "start": self._start, "before_step": self._before_step}
        return {f"{group}.{n}": t.clone() for group, tensors in groups.items()
                for n, t in tensors.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        groups = {"importance": self.importance, "anchor": self.anchor, "path": self._path,
                  "start": self._start, "before_step": self._before_step}
        checked = {(group, n): tensor_entry(state, f"{group}.{n}", what="Synaptic "
                                            "Intelligence", shape=t.shape, dtype=t.dtype)
                   for group, tensors in groups.items() for n, t in tensors.items()}
        for (group, n), value in checked.items():  # all checked first: no half-loaded state
            groups[group][n].copy_(value)
