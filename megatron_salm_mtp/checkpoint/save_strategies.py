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


def _replicas():
    return parallel_state.get_data_parallel_group(with_context_parallel=True)


def save_strategy() -> FullyParallelSaveStrategyWrapper:
    """torch_dist, with the writing of replicated shards spread over the DP replicas."""
    return FullyParallelSaveStrategyWrapper(get_default_save_sharded_strategy(), _replicas())


def load_strategy(path: str) -> FullyParallelLoadStrategyWrapper:
    """The checkpoint's own strategy, each DP replica reading a part and sending it to the others."""
    return FullyParallelLoadStrategyWrapper(get_default_load_sharded_strategy(path), _replicas())


class PendingSaves:
    """Async checkpoint writes in flight. Every method is collective: call it on every rank."""

    def __init__(self):
        self.queue = AsyncCallsQueue()

    def schedule(self, request: AsyncRequest) -> None:
        self.queue.schedule_async_request(request)

    def finalize(self, blocking: bool) -> None:
        """Finalize the writes that are done everywhere (``blocking``: wait for all of them)."""
        if self.queue.get_num_unfinalized_calls():
            self.queue.maybe_finalize_async_calls(blocking=blocking)

    @property
    def in_flight(self) -> int:
        return self.queue.get_num_unfinalized_calls()

