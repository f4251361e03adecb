"""How checkpoints are written and read: Megatron-Core's fully parallel strategies, and async saves.

Fully parallel: the shards every data-parallel replica holds alike (all of them without the
distributed optimizer) are split between the replicas, each writing (and reading) its part, instead
of the first replica doing all of it; what one save costs then falls with the DP size. Megatron-LM
does the same (``--ckpt-fully-parallel-save``, its default, and ``--ckpt-fully-parallel-load``).

Async (``--async-save``, Megatron-LM's flag): the save call only stages the shards (device to host)
and forks a writer; training goes on while it writes. :class:`PendingSaves` holds the writes in
flight; finalizing one (on every rank, a collective) runs its finalize functions: the checkpoint's
marker, its rename into place and the tracker, so a checkpoint exists only once it is complete.
"""

from collections import deque

from megatron.core import parallel_state
from megatron.core.dist_checkpointing.serialization import (
    get_default_load_sharded_strategy,
    get_default_save_sharded_strategy,
)
from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue, AsyncRequest
from megatron.core.dist_checkpointing.strategies.fully_parallel import (
    FullyParallelLoadStrategyWrapper,
    FullyParallelSaveStrategyWrapper,
)
from torch.distributed.checkpoint.api import CheckpointException

from ..config_checks import RunError


def _replicas():
    return parallel_state.get_data_parallel_group(with_context_parallel=True)


def save_strategy() -> FullyParallelSaveStrategyWrapper:
    """torch_dist, with the writing of replicated shards spread over the DP replicas."""
    return FullyParallelSaveStrategyWrapper(get_default_save_sharded_strategy(), _replicas())


def load_strategy(path: str) -> FullyParallelLoadStrategyWrapper:
    """The checkpoint's own strategy, each DP replica reading a part and sending it to the others."""
    return FullyParallelLoadStrategyWrapper(get_default_load_sharded_strategy(path), _replicas())


class CheckpointWriteError(RunError):
    """A checkpoint written in the background (``--async-save``) failed: which one, and the first
    failure a rank reported, on one line."""


class PendingSaves:
    """Async checkpoint writes in flight. Every method is collective: call it on every rank."""

    def __init__(self):
        self.queue = AsyncCallsQueue()
        self.folders = deque()  # the folder each scheduled write fills, oldest first

    def schedule(self, request: AsyncRequest, folder: str) -> None:
        self.queue.schedule_async_request(request)
        self.folders.append(folder)

    def finalize(self, blocking: bool) -> None:
        """Finalize the writes that are done everywhere (``blocking``: wait for all of them).
        A write that failed on any rank raises :class:`CheckpointWriteError` on every rank; the
        checkpoint is then not finalized (no marker, not in the tracker), so it is never loaded."""
        if not self.queue.get_num_unfinalized_calls():
            return
        try:
            finalized = self.queue.maybe_finalize_async_calls(blocking=blocking)
        except CheckpointException as err:
            raise CheckpointWriteError(f'writing checkpoint {self.folders[0]} in the background failed: '
                                       f'{_first_failure(err)}') from None
        for _ in finalized:
            self.folders.popleft()

    @property
    def in_flight(self) -> int:
        return self.queue.get_num_unfinalized_calls()


def _first_failure(err: CheckpointException) -> str:
    """The lowest failed rank's exception, its first line; ranks other than the coordinator
    learn only that one failed."""
    if not err.failures:
        return 'a rank failed to write its shards (the coordinating rank logs which)'
    rank = min(err.failures)
    failure = err.failures[rank]
    exc = failure[0] if isinstance(failure, tuple) else failure
    return f'rank {rank}: {type(exc).__name__}: {(str(exc).splitlines() or [""])[0]}'
