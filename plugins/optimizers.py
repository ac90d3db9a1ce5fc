"""SGD (with momentum, Nesterov and weight decay) and Adam, with PyTorch's update rules
so runs can be compared step for step."""

from __future__ import annotations

import numpy as np

from deltaprop import hookimpl
from deltaprop.config import number
from deltaprop.optimizer import Optimizer


class SGD(Optimizer):
    """p -= lr * (g + wd p), through a momentum buffer when ``momentum`` > 0.

    Config:
        lr: learning rate.
        momentum: momentum factor (0: plain SGD).
        nesterov: Nesterov momentum.
        weight_decay: L2 penalty added to the gradient (wd * p).
    """

    name = "sgd"

    def __init__(self, *, lr: float = 0.01, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0) -> None:
        super().__init__(lr=number("sgd", "lr", lr, low=0, low_open=True))
        self.momentum = number("sgd", "momentum", momentum, low=0, high=1)
        self.nesterov = bool(nesterov)
        self.weight_decay = number("sgd", "weight_decay", weight_decay, low=0)

    def update(self, key: str, param: np.ndarray, grad: np.ndarray) -> None:
        if self.weight_decay:
            grad = grad + self.weight_decay * param
        if self.momentum:
            buf = self.slot(key, "momentum", param)
            buf *= self.momentum
            buf += grad
            grad = grad + self.momentum * buf if self.nesterov else buf
        param -= self.lr * grad


class Adam(Optimizer):
    """Adaptive moments with bias correction (Kingma & Ba).

    Config:
        lr: learning rate.
        beta1: decay of the running mean of gradients.
        beta2: decay of the running mean of squared gradients.
        eps: added to the denominator, for stability.
    """

    name = "adam"

    def __init__(self, *, lr: float = 0.001, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8) -> None:
        super().__init__(lr=number("adam", "lr", lr, low=0, low_open=True))
        self.beta1 = number("adam", "beta1", beta1, low=0, high=1)
        self.beta2 = number("adam", "beta2", beta2, low=0, high=1)
        self.eps = number("adam", "eps", eps, low=0, low_open=True)

    def update(self, key: str, param: np.ndarray, grad: np.ndarray) -> None:
        m = self.slot(key, "m", param)
        v = self.slot(key, "v", param)
        m *= self.beta1
        m += (1 - self.beta1) * grad
        v *= self.beta2
        v += (1 - self.beta2) * (grad * grad)
        step = self.lr / (1 - self.beta1 ** self.t)
        denom = np.sqrt(v / (1 - self.beta2 ** self.t))
        denom += self.eps
        param -= step * (m / denom)


@hookimpl
def deltaprop_register_optimizers() -> list[type[Optimizer]]:
    return [SGD, Adam]
