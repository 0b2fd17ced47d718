"""A stand-in for `torch.cuda` on a CPU host: GPUs of a chosen compute capability, faked at torch's own API.

Only torch's entry points are replaced (`is_available`, `device_count`, `current_device`, `set_device`,
`get_device_properties`, and the tensor probe `is_bf16_supported` runs when emulation is counted); torch's own
`get_device_capability`, `get_device_name` and `is_bf16_supported` then run unchanged on top of them, so the product's
rule meets what torch would say on that GPU: a T4 (7.5) "supports bf16" when emulation counts, as on the real card.
Every attempt to create a tensor on a GPU is recorded (`allocations`), so a test can prove a probe allocates nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

# Cards of each capability the users have (Colab T4, V100, A100, A10G/RTX 30xx, H100).
CARDS = {
    (7, 0): "Tesla V100-SXM2-16GB",
    (7, 5): "Tesla T4",
    (8, 0): "NVIDIA A100-SXM4-40GB",
    (8, 6): "NVIDIA A10G",
    (9, 0): "NVIDIA H100 80GB HBM3",
}


@dataclass
class DeviceProperties:
    name: str
    major: int
    minor: int
    total_memory: int = 16 * 2**30
    multi_processor_count: int = 40


@dataclass
class FakeCuda:
    capability: tuple[int, int]
    count: int = 1
    current: int = 0
    allocations: list = field(default_factory=list)  # devices a tensor was (or would have been) created on
    set_devices: list = field(default_factory=list)
    queried: list = field(default_factory=list)  # device indexes whose properties were read

    def properties(self, device=None) -> DeviceProperties:
        index = self._index(device)
        if not 0 <= index < self.count:
            raise AssertionError(f"invalid device ordinal {index}")
        self.queried.append(index)
        return DeviceProperties(CARDS.get(self.capability, "NVIDIA GPU"), *self.capability)

    def _index(self, device) -> int:
        if device is None:
            return self.current
        if isinstance(device, torch.device):
            return device.index if device.index is not None else self.current
        if isinstance(device, str):
            return int(device.split(":")[1]) if ":" in device else self.current
        return int(device)

    def set_device(self, device) -> None:
        self.current = self._index(device)
        self.set_devices.append(self.current)

    def tensor_probe(self, device) -> bool:
        """torch's bf16 emulation probe creates a tensor on the device: on a real 7.x GPU that works (emulated)."""
        self.allocations.append(self._index(device))
        return True


def install(monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], count: int = 1) -> FakeCuda:
    fake = FakeCuda(capability, count)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: fake.count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: fake.current)
    monkeypatch.setattr(torch.cuda, "set_device", fake.set_device)
    monkeypatch.setattr(torch.cuda, "get_device_properties", fake.properties)
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", fake.tensor_probe)
    monkeypatch.setattr(torch.version, "hip", None)
    return fake


@pytest.fixture
def fake_cuda(monkeypatch):
    """`fake_cuda((7, 5))` makes this process see one GPU of capability 7.5 (a T4) through torch.cuda."""
    return lambda capability, count=1: install(monkeypatch, capability, count)
