"""Batch Renormalization (Ioffe, 2017) as a drop-in for BatchNorm in the trainable part.

AR1* (Lomonaco et al. 2020) replaces BatchNorm with BatchRenorm above the latent layer
because continual mini-batches are small and non-i.i.d.: BatchRenorm corrects the batch
statistics towards the running ones (factors r and d), so training and inference see the
same normalisation. State-dict keys match BatchNorm's, so BN weights load unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


class BatchRenorm(nn.Module):
    """Batch Renormalization over dim 1 of (N, C), (N, C, L) or (N, C, H, W) inputs."""

    def __init__(
        self,
        num_features: int,
        *,
        eps: float = 1e-5,
        momentum: float = 0.01,
        r_max: float = 1.5,
        d_max: float = 2.5,
    ) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum  # slower than BN's 0.1: the stream is non-i.i.d.
        self.r_max = r_max
        self.d_max = d_max
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def _shape(self, x: torch.Tensor) -> tuple[int, ...]:
        return (1, -1) + (1,) * (x.dim() - 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2:
            raise ValueError(f"BatchRenorm expects (N, C, ...) input, got {tuple(x.shape)}")
        shape = self._shape(x)
        reduce_dims = [0] + list(range(2, x.dim()))
        n_per_channel = x.numel() // x.shape[1]
        running_std = (self.running_var + self.eps).sqrt()
        if self.training and n_per_channel > 1:
            batch_mean = x.mean(dim=reduce_dims)
            batch_var = x.var(dim=reduce_dims, unbiased=False)
            batch_std = (batch_var + self.eps).sqrt()
            # r and d are constants for backprop (Ioffe 2017, Algorithm 1).
            r = (batch_std.detach() / running_std).clamp(1 / self.r_max, self.r_max)
            d = ((batch_mean.detach() - self.running_mean) / running_std).clamp(
                -self.d_max, self.d_max
            )
            x_hat = (x - batch_mean.view(shape)) / batch_std.view(shape) * r.view(shape)
            x_hat = x_hat + d.view(shape)
            with torch.no_grad():
                unbiased = batch_var * n_per_channel / (n_per_channel - 1)
                self.running_mean.lerp_(batch_mean, self.momentum)
                self.running_var.lerp_(unbiased, self.momentum)
                self.num_batches_tracked += 1
        else:
            # Eval, or a single value per channel: batch statistics are undefined.
            x_hat = (x - self.running_mean.view(shape)) / running_std.view(shape)
        return x_hat * self.weight.view(shape) + self.bias.view(shape)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, momentum={self.momentum}, "
                f"r_max={self.r_max}, d_max={self.d_max}")


def replace_batchnorm_with_renorm(module: nn.Module, **renorm_options: float) -> nn.Module:
    """Replace every BatchNorm1d/2d inside ``module`` with BatchRenorm, in place.

    Affine parameters and running statistics are copied, so the module computes the same
    function in eval mode before and after. BatchNorm without running statistics is left
    alone: BatchRenorm needs them. Returns ``module`` for chaining.
    """
    for name, child in module.named_children():
        if isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d)) and child.track_running_stats:
            renorm = BatchRenorm(child.num_features, eps=child.eps, **renorm_options)
            with torch.no_grad():
                if child.affine:
                    renorm.weight.copy_(child.weight)
                    renorm.bias.copy_(child.bias)
                if child.running_mean is not None:
                    renorm.running_mean.copy_(child.running_mean)
                    renorm.running_var.copy_(child.running_var)
            renorm.to(child.running_mean.device)  # the model may already be on a GPU
            renorm.train(child.training)
            setattr(module, name, renorm)
        else:
            replace_batchnorm_with_renorm(child, **renorm_options)
    return module
