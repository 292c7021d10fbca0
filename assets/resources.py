"""The one Dagster resource: where the params come from (file + run-config overrides)."""

from __future__ import annotations

import os

from dagster import ConfigurableResource
from pydantic import Field

from clipforge.config import Params
from clipforge.params_file import DEFAULT_PARAMS_FILE, load_params

PARAMS_ENV = "CLIPFORGE_PARAMS"


class ClipforgeResource(ConfigurableResource):
    """Typed params for every stage asset.

    The default file comes from ``$CLIPFORGE_PARAMS`` (else ``params.yaml``) when the code
    location loads; a run can override both fields in its run config (Launchpad:
    ``resources: {clipforge: {config: {overrides: ["student_model.steps=10"]}}}``).
    """

    params_file: str = Field(
        default=DEFAULT_PARAMS_FILE, description="params file (a profile such as profiles/tiny.yaml)"
    )
    overrides: list[str] = Field(default_factory=list, description="section.key=value overrides, applied last")

    def load(self) -> Params:
        return load_params(self.params_file, list(self.overrides))


def default_resource() -> ClipforgeResource:
    return ClipforgeResource(params_file=os.environ.get(PARAMS_ENV, DEFAULT_PARAMS_FILE))
