"""The Dagster code location: ``dagster dev -m assets.definitions`` (DAGSTER_HOME=dagster_home)."""

from __future__ import annotations

from dagster import Definitions

from assets.jobs import full_chain, retrain, retrain_daily
from assets.resources import default_resource
from assets.sensors import new_pool_shards
from assets.stages import STAGE_ASSETS

defs = Definitions(
    assets=STAGE_ASSETS,
    jobs=[full_chain, retrain],
    schedules=[retrain_daily],
    sensors=[new_pool_shards],
    resources={"clipforge": default_resource()},
)
