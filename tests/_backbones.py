"""Tiny per-backbone options shared by the head tests: d_model 16 with each backbone's shape
constraints (mamba2's headdim must divide 2 * d_model; small chunks so sequences span several)."""
TINY_OPTIONS = {
    "aaren": {},
    "mamba": dict(d_state=4),
    "mamba2": dict(d_state=4, headdim=8, chunk_size=8),
    "transformer": dict(n_heads=2),
    "gru": {},
}
