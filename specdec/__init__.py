"""specdec: lossless speculative decoding for Hugging Face causal LMs.

Greedy output is identical, token for token, to the target's own greedy ``generate``;
sampled output is distributed exactly as the target's.  Anything lossy is opt-in.
"""
from . import chat, drafters
from .acceptance import Acceptance
from .config import DecodeConfig
from .generation import GenerateOutput, generate
from .loading import load_model
from .pool import PoolOutput, generate_pool
from .sampling import SamplingConfig
from .policy.smartspec import SmartSpec
from .policy.speculation import (
    FixedLength,
    SpeculationPlan,
    SpeculationPolicy,
    StepContext,
    StepReport,
)
from .stats import DecodeStats
from .target.verifier import Target
from .tree import DraftTree

__all__ = [
    "Acceptance", "DecodeConfig", "DecodeStats", "DraftTree", "FixedLength", "GenerateOutput", "PoolOutput",
    "SamplingConfig", "SmartSpec", "SpeculationPlan", "SpeculationPolicy", "StepContext", "StepReport", "Target", "chat", "drafters",
    "generate", "generate_pool", "load_model",
]
