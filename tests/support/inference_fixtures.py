"""Tiny SALMs and audio prompts for the inference tests (one process, the session's gloo rank)."""

import functools

import torch

from megatron_salm_mtp.compat import mcore
from megatron_salm_mtp.data.frames import audio_tokens
from megatron_salm_mtp.inference import workspace
from megatron_salm_mtp.inference.decode import PromptBatch, greedy_decode, speculative_decode
from megatron_salm_mtp.inference.drafter import mtp_layer_for_depth
from megatron_salm_mtp.model.salm import SALM
from megatron_salm_mtp.model.specs import LOCAL
from tests.support.parallel_utils import tiny_config

PAD_ID, EOS_ID = 256, 258


def tiny_salm(seed: int = 0, **overrides) -> SALM:
    """A random tiny SALM in eval mode; a larger init std makes its logits peaked, so that an
    argmax is not decided by fp32 rounding."""
    torch.manual_seed(seed)
    cfg = tiny_config(**{'init_method_std': 0.3, 'seq_length': 128, 'mtp_num_layers': 3, **overrides})
    return SALM(cfg, LOCAL).eval()


def random_prompts(cfg, lengths_in_frames, seed: int) -> PromptBatch:
    """One utterance per row: 1-3 text ids, its placeholders, 2 text ids; rows differ in length."""
    gen = torch.Generator().manual_seed(seed)
    rows, features = [], []
    for frames in lengths_in_frames:
        head = torch.randint(0, 250, (int(torch.randint(1, 4, (1,), generator=gen)),), generator=gen)
        tail = torch.randint(0, 250, (2,), generator=gen)
        audio = torch.full((audio_tokens(frames, cfg.audio_frame_stack),), cfg.audio_token_id)
        rows.append(torch.cat([head, audio, tail]))
        features.append(torch.randn(cfg.num_mel_bins, frames, generator=gen))
    width = max(len(r) for r in rows)
    tokens = torch.full((len(rows), width), PAD_ID)
    for i, row in enumerate(rows):
        tokens[i, :len(row)] = row
    padded = torch.zeros(len(rows), cfg.num_mel_bins, max(lengths_in_frames))
    for i, feat in enumerate(features):
        padded[i, :, :feat.shape[1]] = feat
    return PromptBatch(tokens, torch.tensor([len(r) for r in rows]), padded,
                       torch.tensor(list(lengths_in_frames)))


def row_of(batch: PromptBatch, row: int) -> PromptBatch:
    """Row ``row`` of a one-audio-per-row batch as a batch of one, unpadded."""
    length = int(batch.lengths[row])
    frames = int(batch.audio_feature_lengths[row])
    return PromptBatch(batch.tokens[row:row + 1, :length], batch.lengths[row:row + 1],
                       batch.audio_features[row:row + 1, :, :frames],
                       batch.audio_feature_lengths[row:row + 1])


@torch.no_grad()
def full_recompute_greedy(model, batch: PromptBatch, max_new_tokens: int, stop_ids, vocab_size):
    """Greedy decoding of a one-row batch by a full SALM forward per token (no cache)."""
    ids = batch.tokens[0].tolist()
    new = []
    for _ in range(max_new_tokens):
        tokens = torch.tensor([ids])
        logits = model(tokens, torch.arange(len(ids))[None], audio_features=batch.audio_features,
                       audio_feature_lengths=batch.audio_feature_lengths)
        token = int(logits[0, -1, :vocab_size].float().argmax())
        ids.append(token)
        new.append(token)
        if token in stop_ids:
            break
    return new


def reference_logits(language_model, hidden: torch.Tensor) -> torch.Tensor:
    """Logits [b, V] of hidden states [b, h]: the tied word embedding (or untied head) as a matrix."""
    weight = (language_model.shared_embedding_or_output_weight()
              if language_model.share_embeddings_and_output_weights else language_model.output_layer.weight)
    return hidden @ weight.t()


@torch.no_grad()
def recompute_drafts(language_model, tokens, lengths, trunk_hidden, depths: int, vocab_size: int):
    """Reference drafts [b, depths]: training's MTP forward (core's rolling layer) over the whole
    sequence at every draft, no cache. tokens [b, >= max(lengths)], row r holding ``lengths[r]``
    ids; trunk_hidden [>= max(lengths), b, h], valid below ``lengths[r] - 1``."""
    span = int(lengths.max())
    rows = torch.arange(tokens.shape[0])
    last_state = lengths - 2  # position n-1 of each row
    input_ids = tokens[:, :span].clone()
    position_ids = torch.arange(span)[None].expand_as(input_ids)
    hidden = trunk_hidden[:span]
    rotary = language_model.rotary_pos_emb(span)
    drafts = []
    for depth in range(depths):
        hidden, input_ids, position_ids = mcore.run_mtp_layer(
            mtp_layer_for_depth(language_model, depth), input_ids=input_ids,
            position_ids=position_ids, hidden_states=hidden, attention_mask=None,
            rotary_pos_emb=rotary, embedding=language_model.embed_mtp_inputs)
        logits = reference_logits(language_model, hidden[last_state, rows])
        drafts.append(logits[:, :vocab_size].float().argmax(-1))
        input_ids = input_ids.clone()
        input_ids[rows, last_state + 1] = drafts[-1]  # what position n-1 reads at the next depth
    return torch.stack(drafts, dim=1)


@torch.no_grad()
def trunk_states(model, tokens: torch.Tensor, batch: PromptBatch) -> torch.Tensor:
    """Trunk final-norm states [s, b, h] of whole sequences ``tokens`` [b, s] that continue
    ``batch``'s prompts (audio spliced in), in one causal forward without a cache."""
    lm = model.language_model
    size, length = tokens.shape
    prompt = batch.tokens.shape[1]
    positions = torch.arange(length)[None].expand(size, length)
    embeddings = lm.embedding(input_ids=tokens, position_ids=positions)  # generated ids as text
    spliced = model.embed_inputs(batch.tokens, positions[:, :prompt], batch.audio_features,
                                 batch.audio_feature_lengths)
    in_prompt = (positions[:, :prompt] < batch.lengths[:, None]).t()[..., None]
    embeddings[:prompt] = torch.where(in_prompt, spliced, embeddings[:prompt])
    return lm.decoder(hidden_states=embeddings, attention_mask=None,
                      rotary_pos_emb=lm.rotary_pos_emb(length))


def oracle_drafter(truth, prompt_lengths, wrong_depth):
    """A stand-in for ``MTPDrafter`` that drafts the true continuation, wrong from depth
    ``wrong_depth[r]`` (1-based; 0: never) of row r on: row r then accepts wrong_depth[r] - 1
    drafts per step (all D when never wrong)."""
    class OracleDrafter:
        def __init__(self, language_model, batch_size, capacity, depths, device):
            self.depths = depths

        def prefill(self, tokens, trunk_hidden, longest):
            pass

        def draft(self, tokens, lengths, trunk_hidden, vocab_size):
            rows = []
            for row, length in enumerate(lengths.tolist()):
                emitted = length - int(prompt_lengths[row])
                drafts = list(truth[row][emitted:emitted + self.depths])
                if wrong_depth[row]:
                    drafts[wrong_depth[row] - 1] = (drafts[wrong_depth[row] - 1] + 1) % vocab_size
                rows.append(drafts)
            return torch.tensor(rows, device=lengths.device)
    return OracleDrafter


def counting_batch(cfg, size: int, seed: int, answer_length: int = 12):
    """A learnable task: after the audio and a separator, count up from the first prompt id
    (mod 50), then EOS. Returns (training batch dict, PromptBatch of the same prompts)."""
    gen = torch.Generator().manual_seed(seed)
    frames = [int(f) for f in torch.randint(24, 56, (size,), generator=gen)]
    prompts = random_prompts(cfg, frames, seed)
    width = int(prompts.lengths.max()) + answer_length + 1
    seq = torch.full((size, width + 1), PAD_ID)
    answer = torch.zeros(size, width + 1)
    for row in range(size):
        length = int(prompts.lengths[row])
        start = int(prompts.tokens[row, 0]) % 50
        seq[row, :length] = prompts.tokens[row, :length]
        seq[row, length:length + answer_length] = (start + torch.arange(answer_length)) % 50
        seq[row, length + answer_length] = EOS_ID
        answer[row, length:length + answer_length + 1] = 1
    batch = {'tokens': seq[:, :-1], 'labels': seq[:, 1:], 'loss_mask': answer[:, 1:],
             'position_ids': torch.arange(width).repeat(size, 1),
             'audio_features': prompts.audio_features,
             'audio_feature_lengths': prompts.audio_feature_lengths}
    return batch, prompts


@functools.cache
def counting_salm():
    """A tiny SALM trained briefly to count (``train_briefly``), built once per process and shared
    by the tests that only decode with it."""
    model = tiny_salm(seed=5, init_method_std=0.02)
    train_briefly(model, steps=100)
    return model


def train_briefly(model, steps: int, lr: float = 1e-2):
    """``steps`` Adam steps of main + MTP loss on ``counting_batch``es (plain torch loop)."""
    from megatron.core.transformer.multi_token_prediction import MTPLossAutoScaler
    MTPLossAutoScaler.set_loss_scale(torch.tensor(1.0))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        batch, _ = counting_batch(model.cfg, 8, seed=1000 + step)
        supervised = batch['loss_mask'].sum()
        model.language_model.set_mtp_loss_weights(torch.full((model.cfg.mtp_depths,), 1.0 / float(supervised)))
        token_loss = model(**batch)
        loss = (token_loss * batch['loss_mask']).sum() / supervised
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return float(loss)


def short_prompt_batches(cfg, utterances: int, batch_size: int, seed: int, device='cpu', frames=(8, 40)):
    """Batches of random prompts with ``frames`` (least, most) audio frames each (short by default:
    many utterances, quickly)."""
    gen = torch.Generator().manual_seed(seed)
    for first in range(0, utterances, batch_size):
        lengths = torch.randint(frames[0], frames[1] + 1, (min(batch_size, utterances - first),), generator=gen)
        batch = random_prompts(cfg, lengths.tolist(), seed=seed + first)
        yield PromptBatch(*(t.to(device) for t in (batch.tokens, batch.lengths, batch.audio_features,
                                                   batch.audio_feature_lengths)))


def exactness_run(model, batches, depths: int, max_new_tokens: int, monkeypatch=None,
                  workspaces=None):
    """(utterances decoded, indices of those whose speculative output differs from greedy at
    width depths+1, drafts accepted). With ``monkeypatch``, an ``oracle_drafter`` drafts greedy's
    continuation, wrong from depth ``row % (depths + 1)`` of each row on (0: never). Both decode
    through ``workspaces`` (a ``WorkspacePool``) when given."""
    if monkeypatch is not None and workspaces is not None:
        raise ValueError('oracle drafts change with every batch: decode them in fresh workspaces')
    vocab = model.cfg.vocab_size
    decoded, differing, accepted = 0, [], 0
    for batch in batches:
        greedy, _ = greedy_decode(model, batch, max_new_tokens, [EOS_ID], vocab, width=depths + 1,
                                  workspaces=workspaces)
        if monkeypatch is not None:
            truth, _ = greedy_decode(model, batch, max_new_tokens + depths + 1, [], vocab,
                                     width=depths + 1)
            wrong = [row % (depths + 1) for row in range(len(truth))]
            monkeypatch.setattr(workspace, 'MTPDrafter', oracle_drafter(truth, batch.lengths.cpu(), wrong))
        speculative, stats = speculative_decode(model, batch, max_new_tokens, [EOS_ID], vocab, depths,
                                                workspaces=workspaces)
        differing += [decoded + row for row, (g, s) in enumerate(zip(greedy, speculative)) if g != s]
        decoded += len(greedy)
        accepted += sum(sum(s.draft_accepts) for s in stats)
    return decoded, differing, accepted


def written_by(chooser, steps: list[dict[str, float]]) -> str:
    """The text a steered chooser of one row over the byte vocabulary writes when the LLM's logits
    at each step are ``steps`` (characters, or 'eos'; the others at 0), up to its stop ('<eos>')."""
    vocab = len(chooser.stop)
    written = ''
    for logits in steps:
        row = torch.zeros(1, vocab)
        for key, value in logits.items():
            row[0, EOS_ID if key == 'eos' else ord(key)] = value
        token = int(chooser(row)[0])
        if token == EOS_ID:
            return written + '<eos>'
        written += chr(token)
    return written


def letter_writing_salm(seed: int = 2, **overrides) -> SALM:
    """A random tiny SALM with a CTC head on characters whose LLM writes lowercase letters, spaces
    and its stop only (every other row of its untied output layer zeroed): words a list can hold.
    Its CTC head's prefix scores differ enough to steer."""
    model = tiny_salm(seed=seed, mtp_num_layers=0, ctc_loss_weight=0.3, ctc_target_units='characters',
                      untie_embeddings_and_output_weights=True, **overrides)
    model.ctc_head.weight.data.mul_(30.0)
    written = torch.zeros(model.cfg.vocab_size, dtype=torch.bool)
    written[[ord(c) for c in 'abcdefghijklmnopqrstuvwxyz '] + [EOS_ID]] = True
    model.language_model.output_layer.weight.data[~written] = 0.0
    return model
