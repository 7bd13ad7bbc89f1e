"""Frozen configs for the proxy model: its shape, and one training run."""

from __future__ import annotations

import dataclasses

VOCAB_SIZE = 256  # byte level: no tokenizer to download


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    """What a candidate's ``init_block`` and ``apply_block`` receive as ``cfg``.

    Attributes:
      d_model: residual stream width.
      n_heads: attention heads (``d_model // head_dim``).
      seq_len: training context length in bytes.
      n_layers: blocks in the stack; blocks may use it to scale their init.
      head_dim: ``d_model // n_heads``.
    """

    d_model: int
    n_heads: int
    seq_len: int
    n_layers: int = 1

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def __post_init__(self):
        if self.d_model <= 0 or self.n_heads <= 0 or self.seq_len <= 0 or self.n_layers <= 0:
            raise ValueError(f"BlockConfig sizes must be positive, got {self}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The whole proxy: byte embedding, ``n_layers`` blocks, final norm, unembedding.

    Attributes:
      d_model: residual width.
      n_layers: number of blocks (stacked and scanned).
      n_heads: attention heads per block.
      seq_len: context length.
      tie_embeddings: share the embedding matrix with the unembedding.
      positions: ``"none"`` (the block brings its own, e.g. rotary) or ``"learned"``
        (an absolute table added after the embedding; counted as embedding params).
      final_norm: ``"rms"`` or ``"layer"``.
    """

    d_model: int
    n_layers: int
    n_heads: int
    seq_len: int = 128
    tie_embeddings: bool = False
    positions: str = "none"
    final_norm: str = "rms"

    def __post_init__(self):
        BlockConfig(self.d_model, self.n_heads, self.seq_len, self.n_layers)  # validates sizes
        if self.positions not in ("none", "learned"):
            raise ValueError(f"positions must be 'none' or 'learned', got {self.positions!r}")
        if self.final_norm not in ("rms", "layer"):
            raise ValueError(f"final_norm must be 'rms' or 'layer', got {self.final_norm!r}")

    @property
    def block(self) -> BlockConfig:
        return BlockConfig(self.d_model, self.n_heads, self.seq_len, self.n_layers)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One proxy training run.

    Attributes:
      n_tokens: D, training tokens (bytes); rounded to whole steps of ``batch_size * seq_len``.
      seed: one integer from which model, data and training keys are split.
      eval_tokens: validation bytes for the final loss (fixed batches, same for every run).
      curve_points: points in the returned training-loss curve (at least 20).
      steps_per_call: optimizer steps fused into one compiled call (fewer Python round trips).
      diverge_factor: the run is ``diverged`` when the loss is non-finite or exceeds
        ``diverge_factor * ln(256)`` (well above the loss of a uniform guess).
    """

    n_tokens: int
    seed: int = 0
    eval_tokens: int = 1 << 16
    curve_points: int = 24
    steps_per_call: int = 8
    diverge_factor: float = 1.5

    def __post_init__(self):
        if self.n_tokens <= 0:
            raise ValueError(f"n_tokens must be positive, got {self.n_tokens}")
        if self.curve_points < 2 or self.steps_per_call < 1 or self.eval_tokens <= 0:
            raise ValueError(f"bad TrainConfig {self}")
