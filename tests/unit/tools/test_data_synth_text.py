"""Synthetic corpus without espeak-ng: text cleaning, the WordNet reader and pools file, held-out
texts per split, the voice lists, augmentation and the numpy resampler."""

import gzip
import logging
import os

import numpy as np
import pytest

from megatron_salm_mtp.data.audio import resample as torch_resample
from megatron_salm_mtp.tools.corpus import synth_text, text_source, voices
from megatron_salm_mtp.tools.corpus.augment import add_noise, coloured_noise, room_impulse_response, speech_power
from megatron_salm_mtp.tools.corpus.polyphase import resample
from megatron_salm_mtp.tools.corpus.text_clean import clean_text, transcript

needs_wordnet = pytest.mark.skipif(text_source.default_text_source() is None,
                                   reason='WordNet absent (apt-get install wordnet-base)')


@pytest.mark.parametrize('raw, spoken', [
    ('he made a note of the appointment', 'he made a note of the appointment'),
    ('a daily run of 100,000 gallons of paint', 'a daily run of 100000 gallons of paint'),
    ('The car rear-ended me!', 'The car rear ended me!'),
    ("`I don't believe in these customs,' he said sneeringly", "I don't believe in these customs, he said sneeringly"),
    ('Italian pope in power in Italy (1378-1458)  \n', 'Italian pope in power in Italy'),
    ('she scored high on the SAT', None),  # acronym
    ('the 8th inning found the home team trailing', None),  # ordinal
    ('He clears $5,000 each month', None),  # currency
    ('pi is 3.14 roughly', None),  # decimal
    ('Mr. Smith went home', None),  # abbreviation
    ('thick crowds', None),  # under 3 words
])
def test_clean_text_rules(raw, spoken):
    assert clean_text(raw) == spoken
    if spoken:
        assert transcript(spoken) == spoken.replace(',', '').replace('!', '')


WORDNET_LINES = {  # tiny data files in WordNet's format: licence lines start with two spaces
    'noun': ['  1 This software and database is being provided to you, the LICENSEE',
             '00000001 03 n 01 appointment 0 000 | the act of putting a person into a non-elective position; '
             '"he made a note of the appointment"; "the 3 boys sold 1,000 tickets"',
             '00000002 18 n 02 Jane_Goodall 0 Goodall 0 000 | English zoologist who studied chimpanzees (born in 1934)',
             '00000003 18 n 01 Saint_Tom_Smith 0 000 | a saint who built the IBM machine',
             '00000004 18 n 01 Rose_Baker 0 000 | a gardener; "Baker grew a rose"'],
    'verb': ['00000005 31 v 01 alphabetize 0 000 | arrange in alphabetical order; "Alphabetize the long list"'],
    'adj': ['00000006 00 a 01 Indian 0 000 | of or relating to India or its people'],
    'adv': ['00000007 02 r 01 quickly 0 000 | with speed; "She ran quickly home"'],
}


def write_wordnet(folder):
    os.makedirs(folder, exist_ok=True)
    for pos, lines in WORDNET_LINES.items():
        with open(os.path.join(folder, f'data.{pos}'), 'w', encoding='latin-1') as f:
            f.writelines(line + '  \n' for line in lines)
    return str(folder)


def test_wordnet_reader_and_pools_file(tmp_path):
    pools = text_source.read_wordnet(write_wordnet(tmp_path / 'wn'))
    assert pools.sentences == ('Baker grew a rose', 'She ran quickly home',  # "she": never lower case here
                               'alphabetize the long list', 'he made a note of the appointment',
                               'the 3 boys sold 1000 tickets')
    assert pools.phrases == ('English zoologist who studied chimpanzees', 'arrange in alphabetical order',
                             'of or relating to India or its people',
                             'the act of putting a person into a non elective position')  # IBM: an acronym
    assert pools.first_names == ('Jane',)  # Saint is a title; Rose is a common word
    assert pools.surnames == ('Baker', 'Goodall', 'Smith')
    assert 'chimpanzees' in text_source.lexicon(pools) and 'English' not in text_source.lexicon(pools)
    path = str(tmp_path / 'pools.json.gz')
    text_source.save_pools(pools, path)
    assert text_source.load_text_source(path) == pools
    first = open(path, 'rb').read()
    text_source.save_pools(pools, path)
    assert open(path, 'rb').read() == first  # the same pools give the same bytes


def test_unreadable_text_sources_are_named(tmp_path):
    with pytest.raises(text_source.TextSourceError, match=f'text source {tmp_path}/nope: no such file'):
        text_source.load_text_source(str(tmp_path / 'nope'))
    (tmp_path / 'empty_dir').mkdir()
    with pytest.raises(text_source.TextSourceError, match=r'empty_dir: cannot read .*data\.noun'):
        text_source.load_text_source(str(tmp_path / 'empty_dir'))
    (tmp_path / 'plain.txt').write_text('not gzip')
    with pytest.raises(text_source.TextSourceError, match='plain.txt: not a readable pools file'):
        text_source.load_text_source(str(tmp_path / 'plain.txt'))
    with gzip.open(tmp_path / 'other.json.gz', 'wt') as f:
        f.write('{"format": 1, "sentences": ["a b c"]}')
    with pytest.raises(text_source.TextSourceError, match=r"other.json.gz: missing \['phrases'"):
        text_source.load_text_source(str(tmp_path / 'other.json.gz'))


@pytest.fixture(scope='module')
def texts():
    if text_source.default_text_source() is None:
        pytest.skip('WordNet absent (apt-get install wordnet-base)')
    pools = text_source.load_text_source()
    return pools, synth_text.split_texts(pools)


def test_wordnet_pools_are_open_vocabulary(texts):
    pools, by_split = texts
    assert len(pools.sentences) > 40000 and len(pools.phrases) > 100000
    assert len(text_source.lexicon(pools)) > 40000
    assert len(pools.first_names) > 1000 and len(pools.surnames) > 2500
    assert 'he made a note of the appointment' in pools.sentences


def draw_texts(by_split, split, n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        subset = synth_text.choose_subset(rng)
        seconds = float(rng.uniform(1.5, 12.0))
        out.append((subset, synth_text.utterance_text(rng, subset, split, by_split[split], seconds, 175, 0)))
    return out


def test_held_out_texts_never_reach_train(texts):
    _, by_split = texts
    train, unseen = by_split['train'], by_split['test_unseen']
    assert not set(train.sentences) & set(unseen.sentences) and not set(train.phrases) & set(unseen.phrases)
    assert not set(train.words) & set(unseen.words) and len(unseen.words) > 2000
    assert not set(train.first_names) & set(unseen.first_names) and not set(train.surnames) & set(unseen.surnames)
    drawn = {s: draw_texts(by_split, s, 1500, seed=i) for i, s in enumerate(('train', 'test_unseen'))}
    train_texts = {transcript(t) for _, t in drawn['train']}
    train_words = {w.lower() for t in train_texts for w in t.split()}
    assert not train_texts & {transcript(t) for _, t in drawn['test_unseen']}
    held_words = {w for subset, t in drawn['test_unseen'] if subset == 'wordlist' for w in t.split()}
    assert held_words and not held_words & train_words
    # each split's word lists, digit strings and names hash into that split
    assert all(synth_text.text_split(t) == 'train' for s, t in drawn['train'] if s != 'natural')


def test_natural_texts_track_the_target_duration(texts):
    _, by_split = texts
    rng = np.random.default_rng(0)
    for target in (1.5, 4.0, 12.0):
        est = [synth_text.estimate_seconds(synth_text.natural(rng, by_split['train'], target, 175, 0), 175)
               for _ in range(200)]
        assert abs(np.median(est) - target) < 0.2 * target, (target, np.median(est))


def test_voice_lists_and_missing_voices(tmp_path, caplog):
    assert not set(voices.VARIANTS) & set(voices.EXCLUDED_VARIANTS)
    assert set(voices.HELD_OUT_VARIANTS) <= set(voices.VARIANTS)
    assert set(voices.HELD_OUT_BASES) <= set(voices.BASE_VOICES)
    pool = voices.split_voices(list(voices.BASE_VOICES), list(voices.VARIANTS))
    assert not set(pool['seen']) & set(pool['unseen'])
    assert len(pool['seen']) + len(pool['unseen']) == 8 * 84 and 'en-us+m3' in pool['seen']
    assert 'en-us+m4' in pool['unseen'] and 'en-us-nyc+m3' in pool['unseen'] and 'en-us-nyc' in pool['unseen']
    for base, rel in voices.BASE_VOICES.items():  # a data folder without en-029 and +m3
        if base != 'en-029':
            (tmp_path / 'lang' / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / 'lang' / rel).write_text('name x\n')
    (tmp_path / 'voices' / '!v').mkdir(parents=True)
    for v in voices.VARIANTS:
        if v != 'm3':
            (tmp_path / 'voices' / '!v' / v).write_text('language variant\n')
    with caplog.at_level(logging.WARNING):
        pool, missing = voices.corpus_voices(str(tmp_path))
    assert missing == ['en-029', '+m3']
    assert 'espeak-ng voice en-029 is missing' in caplog.text and 'voice +m3 is missing' in caplog.text
    assert not any(v.startswith('en-029') or v.endswith('+m3') for v in pool['seen'] + pool['unseen'])


def test_room_impulse_response_decays_at_rt60():
    rng = np.random.default_rng(0)
    h = room_impulse_response(rng, 16000, rt60=0.5, drr_db=6.0)
    assert len(h) == 8000 and h[0] == 1.0
    assert abs(10 * np.log10(1.0 / np.sum(h[1:] ** 2)) - 6.0) < 0.01  # direct / tail energy
    energy = np.convolve(h[1:] ** 2, np.ones(400), 'valid')  # 25 ms windows of the tail
    t = (np.arange(len(energy)) + 200) / 16000
    slope = np.polyfit(t[800:6000], 10 * np.log10(energy[800:6000]), 1)[0]
    assert abs(slope - (-60 / 0.5)) < 10  # dB per second


@pytest.mark.parametrize('colour, exponent', [('white', 0.0), ('pink', 1.0), ('brown', 2.0)])
def test_noise_colour_and_snr(colour, exponent):
    rng = np.random.default_rng(1)
    noise = coloured_noise(rng, 60001, colour)
    assert abs(np.mean(noise ** 2) - 1.0) < 0.02
    power = np.abs(np.fft.rfft(noise)) ** 2
    f = np.arange(len(power))
    octaves = [power[(f >= lo) & (f < 2 * lo)].mean() for lo in (100, 200, 400, 800, 1600)]
    slope = np.polyfit(np.log2([100, 200, 400, 800, 1600]), np.log2(octaves), 1)[0]
    assert abs(slope + exponent) < 0.15
    speech = np.sin(np.arange(32000) / 7.0).astype(np.float32) * 0.3
    noisy = add_noise(rng, speech, 10.0, colour)
    assert abs(10 * np.log10(speech_power(speech) / np.mean((noisy - speech) ** 2.0)) - 10.0) < 0.3


@pytest.mark.parametrize('orig, new, n',
                         [(22050, 16000, 48001), (44100, 16000, 3), (8000, 16000, 1000), (16000, 16000, 5)])
def test_numpy_resampler_matches_the_torch_one(orig, new, n):
    x = np.random.default_rng(2).standard_normal(n).astype(np.float32)
    ours, ref = resample(x, orig, new), torch_resample(x, orig, new)
    assert ours.shape == ref.shape and np.abs(ours - ref).max() < 1e-5
