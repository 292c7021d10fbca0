"""The chain of stages, the one runner that executes a stage, and the ``clipforge`` command
(docs/architecture.md).
"""
