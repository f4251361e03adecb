"""Seconds between marks of a decoding run, on the device's own timeline.

On a GPU the marks are CUDA events, read once at the end (no host wait in between, which would
itself slow the run); on a CPU, the host clock.
"""

import time

import torch


class PhaseClock:
    """Marks in order; ``seconds(a, b)`` between marks ``a`` and ``b`` (indices)."""

    def __init__(self, device):
        self.on_gpu = torch.device(device).type == 'cuda'
        self.marks: list[object] = []

    def mark(self) -> int:
        if self.on_gpu:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())
        return len(self.marks) - 1

    def seconds(self, start: int, end: int) -> float:
        if self.on_gpu:
            self.marks[end].synchronize()
            return self.marks[start].elapsed_time(self.marks[end]) / 1000.0
        return self.marks[end] - self.marks[start]
