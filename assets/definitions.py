"""The Dagster code location: ``dagster dev -m assets.definitions`` (DAGSTER_HOME=dagster_home)."""

from __future__ import annotations

from dagster import Definitions, multiprocess_executor

from assets.jobs import full_chain, retrain, retrain_daily
from assets.resources import default_resource
from assets.sensors import new_pool_shards
from assets.stage_assets import STAGE_ASSETS

# One stage at a time, each in its own process: every stage's torch work already uses all
# cores, and two stages side by side (teacher and captioner bootstraps are independent)
# oversubscribe the CPU threads and run several times slower than one after the other.
# Production deployments swap in their own executor (k8s, celery) per job.
ONE_STAGE_AT_A_TIME = multiprocess_executor.configured({"max_concurrent": 1})

defs = Definitions(
    assets=STAGE_ASSETS,
    executor=ONE_STAGE_AT_A_TIME,
    jobs=[full_chain, retrain],
    schedules=[retrain_daily],
    sensors=[new_pool_shards],
    resources={"clipforge": default_resource()},
)
