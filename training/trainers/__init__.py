"""Training loops: the bootstrap trainers (CLIP teachers, CoCa) and the student trainer."""
