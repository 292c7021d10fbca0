"""Training losses on L2-normalised embeddings (MobileCLIP now; CLIP-KD family next to it)."""
