"""Models: the student registry, open_clip model folders, CoCa sampling, checkpoint layouts,
MobileCLIP.
"""
