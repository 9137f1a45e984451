"""The shapes and repetition counts of a benchmark run: ``full`` for the published table, ``quick`` for a check."""
from dataclasses import dataclass

# Method hyperparameters stay the same in both presets; only the shapes and repetition counts shrink.
LORA_RANK = 8
LORA_ALPHA = 16
ADAPTER_BOTTLENECK = 64
# The MindPet manual's low-rank adapter setting (BERT-base, TNEWS): reduction factor 32, rank-1 factors.
LOW_RANK_REDUCTION_FACTOR = 32
LOW_RANK_SIZE = 1
PTUNING2_PRE_SEQ_LEN = 16
# Prompt tuning and P-tuning v1 (randomly initialised: the benchmark has no tokenizer), as the example runs them.
NUM_VIRTUAL_TOKENS = 20
PTUNING_ENCODER_HIDDEN = 128
VIRTUAL_TOKEN_METHODS = ("prompt_tuning", "ptuning")
# The config fields every benchmarked method is applied with.
HYPERPARAMETERS = {"lora_rank": LORA_RANK, "lora_alpha": LORA_ALPHA, "bottleneck_size": ADAPTER_BOTTLENECK,
                   "reduction_factor": LOW_RANK_REDUCTION_FACTOR, "low_rank_size": LOW_RANK_SIZE,
                   "num_virtual_tokens": NUM_VIRTUAL_TOKENS, "encoder_hidden_size": PTUNING_ENCODER_HIDDEN}


@dataclass(frozen=True)
class Preset:
    """Everything that differs between a quick and a full run.

    Attributes:
        name (str): ``'quick'`` or ``'full'``.
        mlp_width (int): width of every Dense layer of the MLP.
        mlp_depth (int): number of Dense layers.
        mlp_batch (int): rows per MLP step.
        encoder_hidden (int): hidden size of the transformer encoder.
        encoder_layers (int): encoder layers.
        encoder_heads (int): attention heads.
        encoder_intermediate (int): feed-forward width.
        encoder_vocab (int): vocabulary size of the randomly initialised encoder.
        encoder_seq_len (int): tokens per sample.
        encoder_batch (int): samples per encoder step.
        num_labels (int): classes of the classification head.
        warmup_steps (int): untimed steps after compiling each network.
        rounds (int): rounds of the interleaved MLP timings (training and inference); each runs every network once.
        encoder_rounds (int): rounds of the interleaved encoder timing.
        mlp_instances (int): independently built copies of each timed MLP network. Two copies of one network
            differ in speed by several percent for the life of the process, so each figure averages the copies.
        encoder_instances (int): independently built copies of each timed encoder network.
        overhead_instances (int): copies of each network of the LoRA overhead and merged-forward comparisons, whose
            targets (5 % and 2 %) are finer than the difference between two copies.
        profiled_instances (int): copies of each of those networks profiled operator by operator.
        profiled_steps (int): calls of each profiled network.
        mlp_steps_per_round (int): timed MLP training steps of one network in one round.
        encoder_steps_per_round (int): timed encoder training steps of one network in one round.
        forward_steps_per_round (int): timed MLP inference passes of one network in one round.
        memory_steps (int): training steps of each peak-memory process.
        minilm_tiny (bool): the side-by-side comparison with HF PEFT runs a tiny random BERT instead of
            all-MiniLM-L6-v2's shape (see :mod:`bench.minilm`).
        minilm_seq_len (int): tokens per sample in that comparison.
        minilm_batch (int): samples per step in that comparison.
        peer_rounds (int): interleaved rounds of that comparison (mindpet and PEFT, full and LoRA).
        peer_steps_per_round (int): timed steps of one network in one of those rounds.
    """

    name: str
    mlp_width: int
    mlp_depth: int
    mlp_batch: int
    encoder_hidden: int
    encoder_layers: int
    encoder_heads: int
    encoder_intermediate: int
    encoder_vocab: int
    encoder_seq_len: int
    encoder_batch: int
    num_labels: int
    warmup_steps: int
    rounds: int
    encoder_rounds: int
    mlp_instances: int
    encoder_instances: int
    overhead_instances: int
    profiled_instances: int
    profiled_steps: int
    mlp_steps_per_round: int
    encoder_steps_per_round: int
    forward_steps_per_round: int
    memory_steps: int
    minilm_tiny: bool
    minilm_seq_len: int
    minilm_batch: int
    peer_rounds: int
    peer_steps_per_round: int


PRESETS = {
    "full": Preset(name="full", mlp_width=1024, mlp_depth=4, mlp_batch=64,
                   encoder_hidden=384, encoder_layers=4, encoder_heads=6, encoder_intermediate=1536,
                   encoder_vocab=8000, encoder_seq_len=64, encoder_batch=8, num_labels=4,
                   warmup_steps=3, rounds=21, encoder_rounds=11, mlp_instances=3, encoder_instances=2,
                   overhead_instances=6, profiled_instances=3, profiled_steps=40,
                   mlp_steps_per_round=10, encoder_steps_per_round=3,
                   forward_steps_per_round=10, memory_steps=3,
                   minilm_tiny=False, minilm_seq_len=32, minilm_batch=32, peer_rounds=11, peer_steps_per_round=2),
    "quick": Preset(name="quick", mlp_width=128, mlp_depth=4, mlp_batch=8,
                    encoder_hidden=32, encoder_layers=2, encoder_heads=2, encoder_intermediate=64,
                    encoder_vocab=100, encoder_seq_len=8, encoder_batch=2, num_labels=3,
                    warmup_steps=1, rounds=3, encoder_rounds=3, mlp_instances=2, encoder_instances=1,
                    overhead_instances=2, profiled_instances=1, profiled_steps=2,
                    mlp_steps_per_round=2, encoder_steps_per_round=1,
                    forward_steps_per_round=2, memory_steps=1,
                    minilm_tiny=True, minilm_seq_len=8, minilm_batch=2, peer_rounds=3, peer_steps_per_round=1),
}
