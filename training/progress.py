"""Keras-style progress output: `verbose` 0 (silent), 1 (live bar per epoch), 2 (a line per epoch).

    Epoch 3/20 - 0.4s - loss: 0.5748 - accuracy: 0.7010 - val_loss: 0.5512 - val_accuracy: 0.7286

The live bar redraws in place only on a terminal; piped output gets the final line per epoch.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

BAR_WIDTH = 30


def format_logs(logs: dict[str, float]) -> str:
    return " - ".join(
        f"{k}: {v:.4f}" if abs(v) >= 1e-3 or v == 0 else f"{k}: {v:.4e}" for k, v in logs.items()
    )


class Progress:
    def __init__(self, verbose: int, epochs: int, steps: int, stream: TextIO | None = None):
        self.verbose = verbose
        self.epochs = epochs
        self.steps = steps
        self.stream = stream or sys.stdout
        self.live = verbose == 1 and self.stream.isatty()
        self._epoch_start = self._last_draw = 0.0

    def epoch_begin(self, epoch: int) -> None:
        self._epoch_start = time.perf_counter()
        if self.verbose == 1:
            self._print(f"Epoch {epoch + 1}/{self.epochs}")

    def step(self, step: int, logs: dict[str, float]) -> None:
        now = time.perf_counter()
        if self.live and (now - self._last_draw > 0.05 or step == self.steps):
            self._last_draw = now
            elapsed = now - self._epoch_start
            eta = elapsed / step * (self.steps - step)
            self.stream.write(f"\r{self._bar(step)} - ETA: {eta:.0f}s - {format_logs(logs)}")
            self.stream.flush()

    def epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        elapsed = time.perf_counter() - self._epoch_start
        if self.verbose == 2:
            self._print(f"Epoch {epoch + 1}/{self.epochs} - {elapsed:.1f}s - {format_logs(logs)}")
        elif self.verbose == 1:
            per_step = elapsed / max(self.steps, 1) * 1000
            line = f"{self._bar(self.steps)} - {elapsed:.0f}s {per_step:.0f}ms/step"
            self._print(("\r" if self.live else "") + f"{line} - {format_logs(logs)}")

    def message(self, text: str) -> None:
        if self.verbose:
            self._print(text)

    def _bar(self, step: int) -> str:
        done = int(BAR_WIDTH * step / max(self.steps, 1))
        arrow = ">" if done < BAR_WIDTH else ""
        rest = "." * (BAR_WIDTH - done - len(arrow))
        return f"{step:{len(str(self.steps))}d}/{self.steps} [{'=' * done}{arrow}{rest}]"

    def _print(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()
