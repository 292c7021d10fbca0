"""Data formats both writers (pipelines/) and readers (trainers) use: tar shards, DataCompDR,
augmentations, loaders.
"""
