"""The version switches of ``compat/mcore.py`` on the installed megatron-core (CI runs 0.16.1 and 0.19.2)."""

import inspect
import os
import re

import pytest
import torch
from packaging.version import Version

from megatron_salm_mtp.compat import mcore
from tests.support.process import ROOT


def test_installed_release_is_in_the_supported_range():
    with open(os.path.join(ROOT, 'setup.py')) as f:
        low, high = re.search(r"'megatron-core>=([\d.]+),<([\d.]+)'", f.read()).groups()
    assert Version(low) <= mcore.MCORE_VERSION < Version(high)
    assert mcore.MCORE_0_17 == (mcore.MCORE_VERSION >= Version('0.17'))


def test_run_mtp_layer_returns_three_values_whatever_the_layer_returns():
    hidden, ids, pos = torch.zeros(2), torch.ones(2), torch.arange(2)

    def layer_0_16(**kwargs):
        return kwargs['hidden_states'], kwargs['input_ids'], kwargs['position_ids']

    def layer_0_17(**kwargs):
        return kwargs['hidden_states'], kwargs['input_ids'], kwargs['position_ids'], None

    for layer in (layer_0_16, layer_0_17):
        out = mcore.run_mtp_layer(layer, hidden_states=hidden, input_ids=ids, position_ids=pos)
        assert len(out) == 3 and out[0] is hidden and out[1] is ids and out[2] is pos


def test_the_postprocess_override_matches_core():
    """SpeechGPTModel overrides core's private GPTModel._postprocess: the contract holds on this
    release, every argument the override names or reads is recorded, and a change fails loudly."""
    from megatron_salm_mtp.model import llm
    mcore.check_postprocess_contract()
    named = list(inspect.signature(llm.SpeechGPTModel._postprocess).parameters)[1:-1]  # not self, **kwargs
    read = re.findall(r"kwargs\.get\('(\w+)'", inspect.getsource(llm))
    assert read and set(named + read) <= set(mcore.POSTPROCESS_ARGUMENTS), (named, read)


def test_a_changed_postprocess_contract_is_refused(monkeypatch):
    def renamed(self, hidden_states, input_ids, position_ids, labels, rotary_pos_emb, rotary_pos_cos,
                rotary_pos_sin, mtp_in_postprocess=None, token_mask=None, **kwargs):
        pass

    monkeypatch.setattr(mcore.GPTModel, '_postprocess', renamed)
    with pytest.raises(RuntimeError, match=r"GPTModel._postprocess has no \['loss_mask', 'attention_mask'"):
        mcore.check_postprocess_contract()
    monkeypatch.undo()
    monkeypatch.setattr(mcore.GPTModel, 'forward', lambda self, *args, **kwargs: self.output_layer(*args))
    with pytest.raises(RuntimeError, match='no longer calls self._postprocess'):
        mcore.check_postprocess_contract()


def test_the_preprocess_override_matches_core():
    """SpeechGPTModel overrides core's private GPTModel._preprocess for packed rows and replaces its
    second output (RoPE): core's forward must still read that output as rotary_pos_emb."""
    mcore.check_preprocess_contract()


def _forward_reading_rope_third(self, input_ids, position_ids, attention_mask, decoder_input=None):
    preproc_output = self._preprocess(input_ids=input_ids, position_ids=position_ids)
    (decoder_input, sequence_len_offset, rotary_pos_emb) = preproc_output[:3]
    return self.decoder(decoder_input, rotary_pos_emb=rotary_pos_emb)


def test_a_changed_preprocess_contract_is_refused(monkeypatch):
    monkeypatch.setattr(mcore.GPTModel, 'forward', _forward_reading_rope_third)
    with pytest.raises(RuntimeError, match=r"outputs \('decoder_input', 'sequence_len_offset'"):
        mcore.check_preprocess_contract()
    monkeypatch.setattr(mcore.GPTModel, 'forward', lambda self, *args, **kwargs: self.decoder(*args))
    with pytest.raises(RuntimeError, match=r'no longer unpacks self._preprocess'):
        mcore.check_preprocess_contract()


def test_mtp_parameters_keep_one_name_on_every_release(single_rank_parallel):
    from megatron_salm_mtp.model.salm import SALM
    from tests.support.parallel_utils import tiny_config
    names = [n for n, _ in SALM(tiny_config(), 'local').named_parameters() if '.mtp.' in n]
    assert names and all('.mtp_model_layer.' not in n for n in names)
    assert any('.mtp.layers.0.transformer_layer.self_attention.' in n for n in names)


def test_checkpoint_writer_can_be_started_up_front():
    """The loop starts it with SIGUSR1/SIGTERM ignored; a rename upstream must not skip that silently."""
    assert mcore.start_checkpoint_writer()
