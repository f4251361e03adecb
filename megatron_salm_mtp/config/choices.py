"""The values each choice field of the config sections takes, for ``validate()`` and ``--help``."""

from ..data.ctc_text import CTC_TARGET_UNITS

ENCODER_CTC = 'encoder_ctc'
"""Stage 1 of the two-stage recipe: the step runs the encoder and its CTC head only (the LLM is
saved at its initialisation)."""
TRAINING_MODES = ('joint', 'head_only', 'freeze_llm', ENCODER_CTC)
"""``--training-mode`` choices (model/freeze.py says what each trains)."""

# The values a field takes (None: unset), for validate() and --help.
CHOICES = {
    'position_embedding_type': ('rope', 'learned_absolute'),
    'transformer_impl': (None, 'transformer_engine', 'local'),
    'fp8_format': (None, 'e4m3', 'hybrid'),
    'moe_token_dispatcher_type': ('allgather', 'alltoall'),
    'moe_router_load_balancing_type': ('aux_loss', 'seq_aux_loss', 'none'),
    'ctc_target_units': CTC_TARGET_UNITS,
    'lr_decay_style': ('constant', 'linear', 'cosine', 'inverse-square-root'),
    'training_mode': TRAINING_MODES,
    'cross_entropy_fusion_impl': ('native', 'te', 'linear'),
    'cuda_graph_impl': ('none', 'local', 'transformer_engine'),
}
CUDA_GRAPH_SCOPES = ('attn', 'mlp', 'moe_router', 'moe_preprocess')
"""``--cuda-graph-scope`` parts Megatron-Core can graph in these layers (its ``moe`` part needs
drop-and-pad experts, its ``full_iteration`` a static whole step: neither fits the SALM)."""
