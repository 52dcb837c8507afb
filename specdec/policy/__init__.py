"""How much to speculate each step: the policies (``speculation``: fixed depth; ``smartspec``: the
goodput policy), the tree pruning they use, online acceptance rates, step times, and the latency
model with the profiling that fits it (``python -m specdec.policy.profile``)."""
