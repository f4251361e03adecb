"""Save-and-stop signals: SIGTERM / SIGUSR1 (a job's time limit, SLURM preemption, torchrun
forwarding a SIGTERM) ask the loop for a checkpoint at the next step boundary."""

import logging
import signal

from ..compat import mcore
from ..data.loader import STOP_SIGNALS

logger = logging.getLogger(__name__)


def _start_checkpoint_writer_deaf_to_signals() -> None:
    """Start dist_checkpointing's long-lived writer process (a multiprocessing Manager, spawned on
    the first save) while the stop signals are ignored, so it inherits SIG_IGN: SLURM signals every
    process of the step, and a killed writer breaks the very save the signal asks for."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
    try:
        mcore.start_checkpoint_writer()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class StopRequest:
    """SIGTERM / SIGUSR1 (SLURM preemption) ask for a checkpoint at the next step boundary."""

    def __init__(self, saving: bool):
        self.signalled = False
        if saving:
            _start_checkpoint_writer_deaf_to_signals()
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        logger.warning('received signal %d: saving at the next step boundary, then exiting', signum)
        self.signalled = True
