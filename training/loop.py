"""What the training loop keeps between steps besides the model: the window of steps since the
last log record (with the progress bar's moving average) and the Ctrl-C flag."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from dataclasses import dataclass

@dataclass
class LossWindow:
    """Sums over the steps since the last train record; ``ema``, the progress bar's loss (each
    step moves it by a tenth), runs across windows.

    >>> w = LossWindow()
    >>> w.add(loss=2.0, tokens=10, seconds=0.5); w.add(loss=1.0, tokens=30, seconds=1.5)
    >>> w.mean_loss(), w.step_seconds(), round(w.ema, 2)
    (1.5, 1.0, 1.9)
    >>> w.reset(); w.steps, round(w.ema, 2)
    (0, 1.9)
    """

    loss: float = 0.0
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    ema: float | None = None

    def add(self, loss: float, tokens: int, seconds: float) -> None:
        self.loss += loss
        self.steps += 1
        self.tokens += tokens
        self.seconds += seconds
        self.ema = loss if self.ema is None else 0.9 * self.ema + 0.1 * loss

    def mean_loss(self) -> float:
        return self.loss / self.steps

    def step_seconds(self) -> float:
        return self.seconds / self.steps

    def reset(self) -> None:
        self.loss, self.steps, self.tokens, self.seconds = 0.0, 0, 0, 0.0


@contextlib.contextmanager
def graceful_interrupt(signals=(signal.SIGINT, signal.SIGTERM)):
    """The first Ctrl-C (or SIGTERM) sets a flag the loop checks between steps; it then writes
    a checkpoint and stops. A second Ctrl-C interrupts at once, without one."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {s: signal.getsignal(s) for s in signals}

    def handler(signum, frame):
        flag["stop"] = True
        print(f"\nskipdecode train: {signal.Signals(signum).name}: finishing this step and writing a checkpoint "
              "(Ctrl-C again to quit without one)", file=sys.stderr)
        for s, h in previous.items():
            signal.signal(s, h)

    for s in signals:
        signal.signal(s, handler)
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
