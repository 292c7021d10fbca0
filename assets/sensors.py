"""Sensor: start a full chain when the set of pool shards changes."""

import hashlib

from dagster import RunRequest, SensorEvaluationContext, SkipReason, sensor

from assets.jobs import full_chain
from assets.resources import ClipforgeResource
from clipforge.lake import open_lake
from pipelines.datacomp_pool import pool_tars


def shard_set_digest(names: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:16]


@sensor(
    name="new_pool_shards",
    job=full_chain,
    minimum_interval_seconds=300,
    description="Requests a full_chain run when the set of *.tar shards datacomp_pool would ingest changes.",
)
def new_pool_shards(context: SensorEvaluationContext, clipforge: ClipforgeResource) -> RunRequest | SkipReason:
    params = clipforge.load()
    where, names = pool_tars(params, open_lake(params.lake))
    if not names:
        return SkipReason(f"no *.tar shards under {where}")
    digest = shard_set_digest(names)
    if digest == context.cursor:
        return SkipReason(f"{len(names)} shards under {where}, unchanged since the last run request")
    context.update_cursor(digest)
    return RunRequest(
        run_key=f"pool-{digest}",
        tags={"clipforge/pool": where, "clipforge/pool_shards": str(len(names))},
    )
