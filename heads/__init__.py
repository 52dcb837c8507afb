"""Draft-head architectures (Medusa, Chimera, ...): a torch module for serving and a Flax module for training per head type, sharing one safetensors format."""
