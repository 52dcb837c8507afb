"""Head training: self-distilled data from the target, torch feature extraction, JAX/Flax/optax training loops, export to safetensors."""
