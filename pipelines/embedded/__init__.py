"""The embedded corpus generator: scenes, captions, the DataComp-format pool, the teacher corpus,
the benchmark.
"""
