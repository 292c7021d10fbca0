"""Where the ``embedded_corpus`` stage puts its three parts, relative to its folder.

Defined here, in the shared data layer, rather than in the stage module
(``pipelines/embedded_corpus.py``, which writes them) because stages in ``training/`` read
them too, and ``training/`` may not import ``pipelines/``.
"""

POOL_DIR = "pool"  # a DataComp-format pool: what datacomp_pool ingests by default
TEACHER_SHARDS_DIR = "teacher_corpus/shards"  # the clean corpus that bootstraps teachers and captioner
BENCHMARK_DIR = "benchmark"  # clip_benchmark's webdataset layout (training.data.benchmark)
# The same tasks drawn from other random streams: what choices are tuned on, never the benchmark.
VALIDATION_DIR = "validation"
