"""Sensor: start a full chain when the set of pool shards changes."""

import hashlib
from pathlib import Path

from dagster import RunRequest, SensorEvaluationContext, SkipReason, sensor

from assets.jobs import full_chain
from assets.resources import ClipforgeResource
from clipforge.config import Params
from clipforge.lake import Lake, S3Location, s3_client, s3_list

EMBEDDED_SHARDS = "pool/shards"


def _s3_tars(loc: S3Location, params: Params) -> list[str]:
    client = s3_client(params.lake.endpoint_url, params.lake.region)
    prefix = f"{loc.key}/" if loc.key else ""
    return [key[len(prefix) :] for key, _ in s3_list(client, loc) if key.endswith(".tar")]


def list_pool_shards(params: Params) -> tuple[str, list[str]]:
    """(where, sorted shard names relative to it) of the pool that datacomp_pool would ingest.

    ``datacomp_pool.source == "embedded"`` means the generated pool inside the lake's
    published ``embedded_corpus`` stage (nothing yet if that stage has not run).
    """
    source = params.datacomp_pool.source
    if source == "embedded":
        lake = Lake(params.lake)
        if not lake.is_s3:
            folder = Path(params.lake.root) / "embedded_corpus" / EMBEDDED_SHARDS
            return str(folder), sorted(str(p.relative_to(folder)) for p in folder.rglob("*.tar"))
        version = lake.published_version("embedded_corpus")
        root = S3Location.parse(params.lake.root).join("embedded_corpus")
        if version is None:
            return root.uri, []
        loc = root.join(version, EMBEDDED_SHARDS)
        return loc.uri, sorted(_s3_tars(loc, params))
    if source.startswith("s3://"):
        loc = S3Location.parse(source)
        return loc.uri, sorted(_s3_tars(loc, params))
    folder = Path(source)
    return str(folder), sorted(str(p.relative_to(folder)) for p in folder.rglob("*.tar"))


def shard_set_digest(names: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:16]


@sensor(
    name="new_pool_shards",
    job=full_chain,
    minimum_interval_seconds=300,
    description="Requests a full_chain run when the set of *.tar shards under datacomp_pool.source changes.",
)
def new_pool_shards(context: SensorEvaluationContext, clipforge: ClipforgeResource) -> RunRequest | SkipReason:
    where, names = list_pool_shards(clipforge.load())
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
