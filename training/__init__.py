"""Training and evaluation stages (teacher_models, captioner_model, student_model, evaluation) and
their libraries.
"""
