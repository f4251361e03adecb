"""The batches ``bench_train`` times: synthetic rows, or (``--compare-packing``) one realistic length
mix laid out padded and packed (``data/length_mix.py``), with what the report needs of them."""

from typing import NamedTuple

from megatron.core import parallel_state

from ..config import SALMConfig
from ..data.length_mix import packed_microbatches, padded_microbatches, utterances
from ..data.synthetic_batches import synthetic_batch


class Workload(NamedTuple):
    """One rank's microbatches of a step, and the positions of them that are not padding."""
    rows: str  # synthetic | padded | packed
    microbatches: list[dict]
    useful_tokens: int


def workloads(run, bench, cfg: SALMConfig) -> list[Workload]:
    """This rank's batches: synthetic rows, or (``--compare-packing``) one length mix padded and packed."""
    train = run.train
    rows = train.global_batch_size // parallel_state.get_data_parallel_world_size()
    if not bench.compare_packing:
        microbatches = [synthetic_batch(train.micro_batch_size, cfg.seq_length, cfg.vocab_size,
                                        cfg.audio_token_id, cfg.num_mel_bins, cfg.audio_frame_stack,
                                        bench.audio_fraction, bench.answer_fraction, bench.text_only, seed=i)
                        for i in range(rows // train.micro_batch_size)]
        return [Workload('synthetic', microbatches, rows * cfg.seq_length)]
    data = run.data
    samples, _ = utterances(rows, cfg.seq_length, data.max_duration, cfg.vocab_size, cfg.audio_token_id,
                            cfg.num_mel_bins, cfg.audio_frame_stack, train.seed)
    layout = (rows, train.micro_batch_size, cfg.seq_length, 0, cfg.num_mel_bins)
    return [Workload('padded', *padded_microbatches(samples, *layout)),
            Workload('packed', *packed_microbatches(samples, *layout, data.pack_window, train.seed))]


def describe_rows(bench, batches: list[Workload], pack_window: int) -> str:
    if bench.compare_packing:
        per_row = {w.rows: sum(len(b['audio_feature_lengths']) for b in w.microbatches) /
                   sum(b['tokens'].shape[0] for b in w.microbatches) for w in batches}
        return (f"length mix: {per_row['packed']:.2f} utterances per packed row (padded: "
                f"{per_row['padded']:.0f}), pack window {pack_window}")
    if bench.text_only:
        return 'text only'
    return f'audio {bench.audio_fraction:.0%}, supervised {bench.answer_fraction:.0%}'
