"""Libraries over an image-text pool: where its files are, ingesting samples, DataComp's filters,
the pipeline's own shards.
"""
