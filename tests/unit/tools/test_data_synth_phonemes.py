"""Each synthetic utterance's ``phonemes``: espeak-ng's IPA of the text its voice spoke, checked
against direct ``espeak-ng -q --ipa`` calls, per accent, for synthetic accents and after a failure."""

import json
import logging
import os
import shutil
import subprocess

import pytest

from megatron_salm_mtp.tools.corpus import accents, synth_text
from megatron_salm_mtp.tools.corpus.espeak import SynthesisError, espeak_available, find_backend
from megatron_salm_mtp.tools.corpus.synth import PHONEMES, CorpusPlan, SynthSettings, make_utterance
from megatron_salm_mtp.tools.corpus.text_source import default_text_source, load_text_source
from megatron_salm_mtp.tools.corpus.voices import BASE_VOICES, HELD_OUT_BASES, corpus_voices

needs_binary = pytest.mark.skipif(shutil.which('espeak-ng') is None, reason='espeak-ng binary unavailable')
needs_corpus = pytest.mark.skipif(not espeak_available() or default_text_source() is None,
                                  reason='espeak-ng or WordNet unavailable')
SPLITS = ('train', 'valid', 'test', 'test_unseen')


def espeak_ipa(text, voice, path=None):
    """The reference: ``espeak-ng -v VOICE -q --ipa TEXT``, its clause lines joined by spaces."""
    args = ['espeak-ng', *(['--path', path] if path else []), '-v', voice, '-q', '--ipa', text]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return ' '.join(line.strip() for line in out.splitlines() if line.strip())


@needs_corpus
def test_every_line_of_every_split_carries_phonemes(espeak_corpus):
    assert json.load(open(os.path.join(espeak_corpus, 'corpus.json')))['phonemes'] == PHONEMES
    for split in SPLITS:
        rows = [json.loads(line) for line in open(os.path.join(espeak_corpus, f'{split}.jsonl'))]
        assert rows and all(isinstance(r['phonemes'], str) and r['phonemes'].strip() == r['phonemes'] != ''
                            for r in rows)
        assert all('ˈ' in r['phonemes'] and '\n' not in r['phonemes'] for r in rows)  # stress kept, one line


@needs_binary
@pytest.mark.parametrize('accent', ['en-us', 'en-gb-x-gbcwmd'])
def test_binary_phonemes_equal_a_direct_ipa_call(accent):
    text = 'Hello there, my friend. The drunken men & the 3 cats; -5 degrees'  # clauses, SSML escapes, a "-"
    assert find_backend('cli').phonemes(text, accent) == espeak_ipa(text, accent)


@needs_binary
def test_accents_that_read_a_text_differently_get_different_phonemes():
    engine = find_backend('cli')
    us, midlands = (engine.phonemes('the drunken men', v) for v in ('en-us', 'en-gb-x-gbcwmd'))
    assert us == espeak_ipa('the drunken men', 'en-us') and 'ʌ' in us  # drunken: dɹˈʌŋkən
    assert midlands == espeak_ipa('the drunken men', 'en-gb-x-gbcwmd') and 'ʊ' in midlands  # dɹˈʊŋkən
    assert us != midlands


@needs_binary
def test_synthetic_accent_phonemes_come_from_its_overlay_voice_file(tmp_path):
    """Their phoneme replacements show: "the" and "thin" keep their fricatives only in the accents
    that do not replace them; without the overlay the voice does not exist."""
    data_dir = find_backend('cli').data_dir
    bases = sorted(set(BASE_VOICES) - set(HELD_OUT_BASES))
    path, files = accents.write_overlay(data_dir, str(tmp_path), 6, 0, bases)
    engine, text = find_backend('cli', path), 'the other thin path'
    replaced = {name: ('replace 00 D d' in f, 'replace 00 T t[' in f) for name, f in files.items()}
    assert {d for d, _ in replaced.values()} == {True, False} == {t for _, t in replaced.values()}
    for name, (d_replaced, t_replaced) in replaced.items():
        phonemes = engine.phonemes(text, name)
        assert phonemes == espeak_ipa(text, name, path)
        assert ('ð' in phonemes) != d_replaced and ('θ' in phonemes) != t_replaced, (name, phonemes)
    with pytest.raises(SynthesisError, match="for voice 'acc/00' on 'the other thin path'"):
        find_backend('cli').phonemes(text, 'acc/00')


class _PhonemesFailOnce:
    """The binary backend, recording what it speaks; its first IPA call fails as a crash would."""

    def __init__(self, engine):
        self.engine, self.spoken, self.ipa_calls, self.data_dir = engine, [], [], engine.data_dir

    def synth(self, text, voice, prosody):
        self.spoken.append((text, voice))
        return self.engine.synth(text, voice, prosody)

    def phonemes(self, text, voice):
        self.ipa_calls.append((text, voice))
        if len(self.ipa_calls) == 1:
            raise SynthesisError(f'espeak-ng failed (-11) for voice {voice!r} on {text!r}: ')
        return self.engine.phonemes(text, voice)


@needs_corpus
def test_an_ipa_failure_draws_another_text_whose_phonemes_are_kept(caplog):
    engine = _PhonemesFailOnce(find_backend('cli'))
    plan = CorpusPlan(SynthSettings(max_seconds=4.0), synth_text.split_texts(load_text_source(None)),
                      corpus_voices(engine.data_dir)[0])
    with caplog.at_level(logging.WARNING):
        audio, fields = make_utterance(engine, plan, 3)
    assert 'utterance 3: espeak-ng failed (-11)' in caplog.text and 'drawing another text' in caplog.text
    (failed_text, _), (text, voice) = engine.ipa_calls[0], engine.ipa_calls[-1]
    assert len(engine.ipa_calls) == 2 and engine.spoken[-1] == (text, voice) and fields['voice'] == voice
    assert audio.size > 0 and fields['phonemes'] == espeak_ipa(text, voice) != espeak_ipa(failed_text, voice)


def test_library_phonemes_match_the_binary():
    """Both backends, clause by clause (the library's loop over espeak_TextToPhonemes)."""
    pytest.importorskip('espeakng_loader')
    if shutil.which('espeak-ng') is None:
        pytest.skip('espeak-ng binary unavailable')
    library, binary, text = find_backend('lib'), find_backend('cli'), 'Hello there, my friend. The drunken men'
    for voice in ('en-us', 'en-gb-x-gbcwmd'):
        assert library.phonemes(text, voice) == binary.phonemes(text, voice)
