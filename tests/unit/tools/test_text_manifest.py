"""The text-only manifest of the pool's training share (``tools/corpus/text_manifest.py``): every
training text once, as the corpus spells it, no text of a held-out split, lines the training's
manifest reader takes as text-only conversations; an unreadable text source is one error line."""

from megatron_salm_mtp.data.manifest import read_manifest
from megatron_salm_mtp.tools.corpus.synth_text import text_split
from megatron_salm_mtp.tools.corpus.text_clean import transcript
from megatron_salm_mtp.tools.corpus.text_manifest import DEFAULT_PROMPT, main
from megatron_salm_mtp.tools.corpus.text_source import TextPools, save_pools

WORDS = ('river', 'stone', 'garden', 'quiet', 'lamp', 'winter', 'orange', 'bridge', 'candle', 'forest')


def _pools(path) -> TextPools:
    """400 sentences, 400 phrases and two more of the training share spelt to one transcript, names."""
    sentences = tuple(f'the {a} near the {b} was {i} years old' for i, (a, b) in
                      enumerate((a, b) for a in WORDS for b in WORDS for _ in range(4)))
    phrases = tuple(f'a {a} or {b} kept for {i} days' for i, (a, b) in
                    enumerate((a, b) for a in WORDS for b in WORDS for _ in range(4)))
    twice = next(w for w in WORDS if text_split(f'a {w}-post') == 'train')
    phrases += (f'a {twice}-post', f'a {twice} post')
    pools = TextPools(sentences, phrases, ('Jane',), ('Baker',), 'test pools')
    save_pools(pools, str(path))
    return pools


def test_the_manifest_holds_each_training_text_once_and_no_held_out_text(tmp_path, capsys):
    pools = _pools(tmp_path / 'pools.json.gz')
    out = tmp_path / 'train_text.jsonl'
    assert main(['--text-source', str(tmp_path / 'pools.json.gz'), '--out', str(out)]) == 0
    examples = read_manifest(str(out))
    answers = [e.answer_text for e in examples]
    by_split = {}
    for text in pools.sentences + pools.phrases:
        by_split.setdefault(text_split(text), set()).add(transcript(text))
    assert set(by_split) == {'train', 'valid', 'test', 'test_unseen'}  # the pools reach every split
    assert len(answers) == len(set(answers)) and set(answers) == by_split['train']
    for example in examples:
        assert not example.audios
        assert [s.value for s in example.segments if s.role == 'user'] == [DEFAULT_PROMPT]
    words = sum(len(a.split()) for a in answers)
    assert capsys.readouterr().out.strip() == (
        f'wrote {len(answers)} texts of the training share ({words} words, '
        f'{len({w.lower() for a in answers for w in a.split()})} distinct) to {out}')


def test_an_unreadable_text_source_is_one_error_line(tmp_path, capsys):
    (tmp_path / 'bad.json.gz').write_bytes(b'not gzip')
    assert main(['--text-source', str(tmp_path / 'bad.json.gz'), '--out', str(tmp_path / 'x.jsonl')]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f'python -m megatron_salm_mtp.tools.corpus.text_manifest: error: text source {tmp_path}/bad.json.gz: '
        'not a readable pools file'), err
    assert not (tmp_path / 'x.jsonl').exists()
