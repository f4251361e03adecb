"""How many LLM placeholder tokens one utterance becomes: the contract between data and model.

Log-mel frames come at a 10 ms hop (Whisper drops the last STFT frame, so ``samples // hop``);
the encoder's second convolution halves the rate (kernel 3, stride 2, padding 1); the projector
stacks ``stack`` encoder frames into one LLM token, zero-padding the last group.
"""

SAMPLE_RATE = 16_000
HOP_LENGTH = 160


def mel_frames(num_samples: int) -> int:
    """Log-mel frames for ``num_samples`` of 16 kHz audio (Whisper's count)."""
    return num_samples // HOP_LENGTH


def encoder_frames(num_mel_frames):
    """Frames after the encoder's stride-2 convolution (0 for 0: floor division). Elementwise on
    integer tensors too, so the model counts on the device without a host round trip."""
    return (num_mel_frames - 1) // 2 + 1


def audio_tokens(num_mel_frames, stack: int):
    """LLM placeholder tokens for an utterance of ``num_mel_frames`` log-mel frames."""
    return -(-encoder_frames(num_mel_frames) // stack)
