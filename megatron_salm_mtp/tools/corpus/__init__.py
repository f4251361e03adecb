"""The synthetic speech corpus (``synth``): espeak-ng voices (``espeak``, ``voices``) read texts
from WordNet (``text_source`` + ``text_clean``, mixed by ``synth_text``), with noise and
reverberation (``augment``), resampled (``polyphase``) and summarised (``synth_summary``)."""
