"""``--ctc-target-units phonemes``: the inventory, the ids of espeak-ng's IPA, the manifest field
through the dataset (lines without it, or with an unknown character, skipped and counted), and
the start-up checks."""

import json
import logging
import re
import shutil
import subprocess
import unicodedata

import pytest

from megatron_salm_mtp.config import ConfigError
from megatron_salm_mtp.data.ctc_phonemes import PHONEMES, PhonemeError, phoneme_ids
from megatron_salm_mtp.data.ctc_targets import (
    MISSING_PHONEMES,
    CTCTargetError,
    ctc_targets,
    first_line_without_phonemes,
)
from megatron_salm_mtp.data.dataset import BadSampleError
from megatron_salm_mtp.data.loader import DataConfig, build_dataset
from megatron_salm_mtp.data.manifest import parse_line
from megatron_salm_mtp.data.tokenizer import ByteTokenizer
from megatron_salm_mtp.inference.inputs import read_utterances
from megatron_salm_mtp.tools.corpus.voices import BASE_VOICES
from megatron_salm_mtp.train import parse_and_validate
from tests.support.data_fixtures import make_corpus, write_manifest
from tests.support.parallel_utils import tiny_config

DRUNKEN_MEN = 'ðə dɹˈʌŋkən mˈɛn'  # espeak-ng -v en-us -q --ipa "the drunken men"


def _spell(ids):
    return ''.join(PHONEMES[i] for i in ids)


def test_the_inventory_is_sorted_unique_and_has_no_stress_marks():
    assert list(PHONEMES) == sorted(set(PHONEMES)) and len(PHONEMES) == 52
    assert PHONEMES[0] == ' ' and 'ː' in PHONEMES and not set('ˈˌ:\n') & set(PHONEMES)
    assert all(unicodedata.normalize('NFD', p) == p for p in PHONEMES)  # what phoneme_ids reads
    assert tiny_config(ctc_loss_weight=0.3, ctc_target_units='phonemes').ctc_vocab_size == 52


def test_phoneme_ids_round_trip_drop_stress_and_make_one_space_per_boundary():
    assert _spell(phoneme_ids(DRUNKEN_MEN)) == 'ðə dɹʌŋkən mɛn'
    # clause lines, runs of spaces, the Scottish table's ASCII length mark, a precomposed letter
    assert _spell(phoneme_ids(' hˈɛloʊ\n wˌɜːld  ɐlˈa:skʌ fɹiːsˈ\u00f5 ')) == 'hɛloʊ wɜːld ɐlaːskʌ fɹiːso\u0303'
    assert phoneme_ids('ˈˌ ') == []
    assert phoneme_ids('t̪') == [PHONEMES.index('t'), PHONEMES.index('\u032a')]  # a mark is a unit


def test_a_character_outside_the_inventory_is_named():
    with pytest.raises(PhonemeError, match=r"'g' \(U\+0067\), 'ʁ' \(U\+0281\) not in the phoneme inventory"):
        phoneme_ids('ʁoʒ gˈæ')


@pytest.mark.skipif(shutil.which('espeak-ng') is None, reason='no espeak-ng program')
def test_every_english_voice_of_espeak_maps_into_the_inventory():
    text = 'The thirsty Scots whisper; 1999 hours at Loch Ness! Bach, garage, Reich, vehicle, rhythm.'
    for voice in BASE_VOICES:
        ipa = subprocess.run(['espeak-ng', '-v', voice, '-q', '--ipa', text], capture_output=True,
                             text=True, check=True).stdout
        ids = phoneme_ids(ipa.replace('\n', ' '))
        assert len(ids) > 40 and ' ' in _spell(ids), voice


def _line(fields: str):
    return parse_line('{"audio_filepath": "a.wav", "text": "the drunken men"' + fields + '}', 'm.jsonl', 3)


def test_ctc_targets_read_the_field_not_the_text():
    example = _line(f', "phonemes": "{DRUNKEN_MEN}"')
    assert ctc_targets(example, ByteTokenizer(), 'phonemes') == [phoneme_ids(DRUNKEN_MEN)]
    for fields, found in (('', "no 'phonemes' field"), (', "phonemes": " "', 'an empty or non-string (str)'),
                          (', "phonemes": ["a"]', 'an empty or non-string (list)')):
        with pytest.raises(CTCTargetError, match=f'{MISSING_PHONEMES}: {re.escape(found)}'):
            ctc_targets(_line(fields), ByteTokenizer(), 'phonemes')
    translation = _line(', "task": "ast"')  # no transcript of its audio: no targets, no field needed
    assert ctc_targets(translation, ByteTokenizer(), 'phonemes') == [[]]


@pytest.fixture
def phoneme_manifest(tmp_path):
    """12 utterances: 10 with phonemes, one without the field (line 4), one with an unknown
    character (line 8)."""
    make_corpus(tmp_path, n=12)
    rows = [json.loads(line) for line in open(tmp_path / 'train.jsonl')]
    for i, row in enumerate(rows):
        if i != 3:
            row['phonemes'] = 'jˈuːtəɹəns ' + ('ʁ' if i == 7 else 'wˈʌn' * (i + 1))
    return write_manifest(tmp_path / 'train.jsonl', rows)


@pytest.mark.parametrize('prescan', [True, False])
def test_the_dataset_emits_phoneme_ids_and_skips_bad_lines(phoneme_manifest, prescan, caplog):
    cfg = DataConfig(seq_length=512, ctc_target_units='phonemes', prescan=prescan, pack_sequences=False)
    with caplog.at_level(logging.WARNING):
        ds = build_dataset(cfg, phoneme_manifest)
        samples = [ds[i] for i in range(len(ds))]
    kept = [i for i in range(12) if i not in (3, 7)]
    if prescan:
        assert len(ds) == 10
    targets = {tuple(t) for s in samples for t in s['ctc_targets']}
    assert targets == {tuple(phoneme_ids('juːtəɹəns ' + 'wʌn' * (i + 1))) for i in kept}
    assert ds.skip_counts() == {'missing_phonemes': 1, 'unknown_phoneme': 1}
    assert f'{phoneme_manifest}:4): missing_phonemes' in caplog.text
    assert f"{phoneme_manifest}:8): unknown_phoneme ('ʁ' (U+0281) not in the phoneme inventory" in caplog.text


def test_strict_data_stops_at_a_line_without_phonemes(phoneme_manifest):
    cfg = DataConfig(seq_length=512, ctc_target_units='phonemes', strict_data=True, pack_sequences=False)
    with pytest.raises(BadSampleError, match=f'{phoneme_manifest}:4\\): missing_phonemes'):
        build_dataset(cfg, phoneme_manifest)


def test_a_manifest_without_the_field_is_refused_at_start_in_one_line(tmp_path, phoneme_manifest):
    text_only = {'conversations': [{'from': 'User', 'type': 'text', 'value': 'hi'},
                                   {'from': 'Assistant', 'type': 'text', 'value': 'hello'}]}
    bare = write_manifest(tmp_path / 'bare.jsonl', ['', text_only, {'audio_filepath': 'a.wav', 'text': 'a'}])
    assert first_line_without_phonemes(bare) == 3  # the first line with a transcript to target
    assert first_line_without_phonemes(phoneme_manifest) is None  # line 4 is the dataset's skip
    flags = ['--ctc-loss-weight', '1', '--ctc-target-units', 'phonemes', '--training-mode', 'encoder_ctc',
             '--mtp-num-layers', '0']
    run = parse_and_validate(['--train-manifest', phoneme_manifest] + flags)
    assert run.model.ctc_vocab_size == len(PHONEMES) and run.data.ctc_target_units == 'phonemes'
    for args in (['--train-manifest', bare], ['--train-manifest', phoneme_manifest, '--valid-manifest', bare]):
        flag = args[-2]
        with pytest.raises(ConfigError, match=f"^{flag} {bare}:3: no 'phonemes' field, which "
                                              "--ctc-target-units phonemes trains the CTC head on"):
            parse_and_validate(args + flags)
    with pytest.raises(ConfigError, match='--ctc-target-units phonemes needs --ctc-loss-weight > 0'):
        parse_and_validate(['--train-manifest', phoneme_manifest, '--ctc-target-units', 'phonemes'])


def test_evaluation_reads_a_manifest_without_the_field(tmp_path):
    """Only training's CTC loss reads the phonemes: a phoneme model's test sets need none."""
    manifest = make_corpus(tmp_path, n=3)
    data = DataConfig(ctc_target_units='phonemes', pack_sequences=False)
    utterances, skips = read_utterances(manifest, data, data.make_tokenizer())
    assert len(utterances) == 3 and not skips
