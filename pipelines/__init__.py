"""Data stages (embedded_corpus, datacomp_pool, filtered_pool, synthetic_captions,
reinforced_dataset) and their libraries.
"""
