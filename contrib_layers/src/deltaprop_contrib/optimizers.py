"""RMSprop with PyTorch's update rule (``torch.optim.RMSprop``), so runs compare step for
step: a running mean of squared gradients scales each step."""

from __future__ import annotations

import numpy as np

from deltaprop import hookimpl
from deltaprop.config import number
from deltaprop.optimizer import Optimizer


class RMSprop(Optimizer):
    """v = alpha v + (1 - alpha) g^2; p -= lr g / (sqrt(v) + eps), optionally centred
    (subtracting the running mean of g) and with momentum and weight decay.

    Config:
        lr: learning rate, > 0.
        alpha: decay of the running mean of squared gradients, in [0, 1].
        eps: added to the denominator sqrt(v), for stability, > 0.
        momentum: momentum factor, in [0, 1] (0: none).
        centered: use v minus the square of the running mean of g (an estimate of the
            gradient's variance) in place of v.
        weight_decay: L2 penalty added to the gradient (wd * p), >= 0.
    """

    name = "rmsprop"

    def __init__(self, *, lr: float = 0.01, alpha: float = 0.99, eps: float = 1e-8,
                 momentum: float = 0.0, centered: bool = False,
                 weight_decay: float = 0.0) -> None:
        super().__init__(lr=number("rmsprop", "lr", lr, low=0, low_open=True))
        self.alpha = number("rmsprop", "alpha", alpha, low=0, high=1)
        self.eps = number("rmsprop", "eps", eps, low=0, low_open=True)
        self.momentum = number("rmsprop", "momentum", momentum, low=0, high=1)
        self.centered = bool(centered)
        self.weight_decay = number("rmsprop", "weight_decay", weight_decay, low=0)

    def update(self, key: str, param: np.ndarray, grad: np.ndarray) -> None:
        if self.weight_decay:
            grad = grad + self.weight_decay * param
        square_avg = self.slot(key, "square_avg", param)
        square_avg *= self.alpha
        square_avg += (1 - self.alpha) * (grad * grad)
        if self.centered:
            grad_avg = self.slot(key, "grad_avg", param)
            grad_avg *= self.alpha
            grad_avg += (1 - self.alpha) * grad
            denom = np.sqrt(square_avg - grad_avg * grad_avg)
        else:
            denom = np.sqrt(square_avg)
        denom += self.eps
        if self.momentum:
            buf = self.slot(key, "momentum", param)
            buf *= self.momentum
            buf += grad / denom
            param -= self.lr * buf
        else:
            param -= self.lr * (grad / denom)


@hookimpl
def deltaprop_register_optimizers() -> list[type[Optimizer]]:
    return [RMSprop]
