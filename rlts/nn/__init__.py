"""Sequence layers, all with one interface (see rlts.nn.base): parallel `forward(x, state)`,
recurrent `step(x_t, state)`, `init_state(batch_size, device, dtype)`.

Backbones by name for `SequenceModel(backbone=...)`:
    aaren        AarenBlock (rlts.nn.aaren): learned-query softmax attention as a scan + MLP
    mamba        MambaBlock (rlts.nn.mamba): Mamba-1 selective SSM
    mamba2       Mamba2Block (rlts.nn.mamba2): Mamba-2 SSD, as in Drama's world model
    transformer  CausalTransformerBlock (rlts.nn.baselines): SDPA + RoPE, KV cache
    gru          GRUBlock (rlts.nn.baselines)

Also: ConvStem (rlts.nn.conv), causal convolutions with batch norm over padded batches, a
feature extractor to put before a backbone (the classification head's stem="conv").
"""
from rlts.nn.base import BACKBONES, MLP, SequenceLayer, register_backbone
from rlts.nn.model import SequenceModel, count_parameters, state_nbytes
from rlts.nn.aaren import Aaren, AarenBlock  # noqa: E402  (importing registers the backbones)
from rlts.nn.baselines import GRU, CausalTransformer, CausalTransformerBlock, GRUBlock
from rlts.nn.mamba import Mamba, MambaBlock
from rlts.nn.mamba2 import Mamba2, Mamba2Block
from rlts.nn.conv import ConvStem, MaskedBatchNorm1d

__all__ = [
    "BACKBONES", "MLP", "SequenceLayer", "SequenceModel", "count_parameters", "state_nbytes", "register_backbone",
    "Aaren", "AarenBlock", "CausalTransformer", "CausalTransformerBlock", "GRU", "GRUBlock", "Mamba", "MambaBlock", "Mamba2", "Mamba2Block",
    "ConvStem", "MaskedBatchNorm1d",
]
