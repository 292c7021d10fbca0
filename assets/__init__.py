"""Dagster: one asset per stage with its gate check, jobs, the retraining schedule, the pool
sensor. The only code that imports dagster.
"""
