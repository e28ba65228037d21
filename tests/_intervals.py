"""A naive reference of adaptive recent-error conformal intervals, element by element."""
import math

import numpy as np


def adaptive_conformal_loop(known, stream, level, lag, size, every, gamma):
    """Half-widths (N, H, C) and the next level, by plain loops: for window i the errors known
    at its last re-ranking (known, then stream windows up to at - lag), the latest `size` of
    them, each step and channel's ceil((n + 1) * level_i)-th smallest (clipped to 1..n), where
    level_i = 1 - alpha_i and alpha moves by gamma * ((1 - level) - miss_j) once window j is
    `lag` windows old (miss_j: the share of window j's elements above their half-widths)."""
    known, stream = np.abs(np.asarray(known, float)), np.abs(np.asarray(stream, float))
    n_win, horizon, channels = stream.shape
    half = np.zeros(stream.shape)
    alpha, misses = 1.0 - level, []
    for i in range(n_win):
        if i >= lag:
            alpha += gamma * ((1.0 - level) - misses[i - lag])
        lvl = min(max(1.0 - alpha, 0.0), 1.0)
        at = i - i % every
        pool = list(known) + [stream[k] for k in range(0, max(0, at - lag + 1))]
        pool = pool[-size:]
        outside = 0
        for h in range(horizon):
            for c in range(channels):
                values = sorted(p[h, c] for p in pool)
                rank = min(max(math.ceil((len(values) + 1) * lvl), 1), len(values))
                half[i, h, c] = values[rank - 1]
                outside += stream[i, h, c] > half[i, h, c]
        misses.append(outside / (horizon * channels))
    for j in range(max(0, n_win - lag), n_win):
        alpha += gamma * ((1.0 - level) - misses[j])
    return half, min(max(1.0 - alpha, 0.0), 1.0)
