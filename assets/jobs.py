"""Jobs over the stage assets, and the (stopped by default) retraining schedule."""

from __future__ import annotations

from dagster import AssetSelection, DefaultScheduleStatus, ScheduleDefinition, define_asset_job

from assets.stage_assets import GROUP

full_chain = define_asset_job(
    "full_chain",
    selection=AssetSelection.groups(GROUP),
    description="Every stage, from the embedded corpus (or pool ingestion) to evaluation.",
)

# Retraining reuses the published data stages in the lake and re-runs training onwards.
retrain = define_asset_job(
    "retrain",
    selection=AssetSelection.assets("student_model").downstream(),
    description="student_model and everything downstream of it, on the data already in the lake.",
)

retrain_daily = ScheduleDefinition(
    name="retrain_daily",
    job=retrain,
    cron_schedule="0 3 * * *",
    default_status=DefaultScheduleStatus.STOPPED,
    description="Retrain, reparameterize, export and evaluate every night at 03:00 (off until turned on).",
)
