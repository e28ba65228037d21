"""rlts: reinforcement learning and time-series modelling on linear-time sequence models.

`rlts` holds what every model and task shares: configs, seeding and devices, logging and
checkpoints, layers (`rlts.nn`), heads (`rlts.heads`), data (`rlts.data`) and the training loop
(`rlts.trainer`). It builds on `rlts.kernels` and knows nothing of agents or tasks.
"""
__version__ = "0.1.0"
