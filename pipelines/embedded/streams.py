"""One random stream per part of the embedded corpus, so that resizing one part never changes
another.
"""

from __future__ import annotations

import numpy as np

# Independent random streams per part (numpy SeedSequence entropy [seed, stream, ...]).
POOL_STREAM = 1
TEACHER_STREAM = 2
BENCHMARK_STREAM = 3
VALIDATION_STREAM = 4  # the benchmark's tasks again, other scenes: for tuning


def stream_rng(seed: int, *stream: int) -> np.random.Generator:
    """The generator of one part of the corpus: ``[seed, *stream]`` as SeedSequence entropy."""
    if seed < 0:
        raise ValueError(f"embedded_corpus.seed must be >= 0, got {seed}")
    return np.random.default_rng([seed, *stream])
