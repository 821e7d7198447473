"""The model contract shared by every architecture: a front-end and a counted network."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

SAMPLE_RATE = 32_000


class ASCModel(nn.Module):
    """Waveform classifier = ``frontend`` (32 kHz waveform ``[B, T]`` -> features ``[B, 1, F, T']``) + ``net``.

    Only ``net`` is counted for MACs and parameter memory, as in the official DCASE 2025 complexity check, where
    the spectrogram is computed by ``load_inputs`` outside the counted module.
    """

    arch_name: str = ""
    arch_config: dict[str, Any]

    def __init__(self, frontend: nn.Module, net: nn.Module, sample_rate: int = SAMPLE_RATE):
        super().__init__()
        self.frontend = frontend
        self.net = net
        self.sample_rate = sample_rate
        self.arch_config = {}

    def features(self, wave: torch.Tensor) -> torch.Tensor:
        return self.frontend(wave)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.net(self.features(wave))

    @torch.no_grad()
    def input_shape(self, seconds: float = 1.0) -> tuple[int, ...]:
        """Shape of the counted network's input for one clip (batch 1), measured by running the front-end."""
        was_training = self.frontend.training
        self.frontend.eval()
        try:
            shape = tuple(self.frontend(torch.zeros(1, int(round(seconds * self.sample_rate)))).shape)
        finally:
            self.frontend.train(was_training)
        return shape


def declared_memory_format(net: nn.Module) -> torch.memory_format:
    """The layout a network trains and infers in: its class's ``memory_format`` (measured per architecture on CPU,
    e.g. CP-Mobile's channels-last), else PyTorch's default."""
    return getattr(net, "memory_format", torch.contiguous_format)
