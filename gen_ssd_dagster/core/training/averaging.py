"""An exponential moving average of a model's weights (`TrainConfig.ema_decay`).

The last weights of a run carry the noise of its last batches, and so of the example order; their
average over the last ~1 / (1 - decay) steps carries much less of it. The average is kept in
float32 beside the model (one more copy of the weights) and copied into the model before it is saved.
"""

from __future__ import annotations

import torch


class WeightAverage:
    """ema = decay * ema + (1 - decay) * weights, after every optimizer step; it starts at the weights."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.weights = {name: p.detach().float().clone() for name, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for name, p in model.named_parameters():
            self.weights[name].lerp_(p.detach().float(), 1 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        for name, p in model.named_parameters():
            p.copy_(self.weights[name].to(p.dtype))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: w.cpu() for name, w in self.weights.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state.keys() != self.weights.keys():
            raise ValueError("the saved weight average is of another model (its parameter names differ)")
        self.weights = {name: state[name].to(w.device, torch.float32) for name, w in self.weights.items()}
