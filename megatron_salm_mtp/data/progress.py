"""Progress of long work on stderr (or a logger): items done, rate, time left."""

import logging
import sys
import time


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


class Progress:
    """``label: done/total unit (pct), rate unit/s, ETA h:mm:ss``, at most once per ``interval``
    seconds, and once at the end with the elapsed time; to ``logger`` at INFO where given (a
    training log keeps its timestamps and ``--logging-level``), else printed to ``stream``."""

    def __init__(self, label: str, total: int, unit: str = 'utterances', interval: float = 10.0, stream=None,
                 logger: logging.Logger | None = None):
        self.label, self.total, self.unit, self.interval = label, total, unit, interval
        self.stream, self.logger = stream or sys.stderr, logger
        self.done = 0
        self.start = self.last = time.monotonic()

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.done >= self.total or now - self.last >= self.interval:
            self.last = now
            self._print(now - self.start)

    def _print(self, elapsed: float) -> None:
        rate = self.done / elapsed if elapsed > 0 else float('inf')
        head = f'{self.label}: {self.done}/{self.total} {self.unit} ({100 * self.done / max(self.total, 1):.0f}%), ' \
               f'{rate:.1f} {self.unit}/s'
        if self.done >= self.total:
            tail = f'done in {_clock(elapsed)}'
        else:
            tail = f'ETA {_clock((self.total - self.done) / rate)}'
        if self.logger is not None:
            self.logger.info('%s, %s', head, tail)
        else:
            print(f'{head}, {tail}', file=self.stream, flush=True)
