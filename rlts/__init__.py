"""rlts: reinforcement learning and time-series modelling on linear-time sequence models.

`rlts` holds what every model and task shares: configs, seeding and devices, logging and
checkpoints (and, in later versions, layers, heads and the training loops). It builds on
`kernels` and knows nothing of agents or tasks.
"""
__version__ = "0.1.0"
