"""Where ``clipforge experiment`` writes its result, relative to the project root: the outputs of
the experiment's DVC stages (``experiments/dvc.yaml``). A module of its own so that the dvc.yaml
generator and the CLI read the names without importing torch."""

from __future__ import annotations

from dataclasses import dataclass

COMMAND = "clipforge experiment"
# With experiment.split = validation (tuning), the same files under this folder instead.
VALIDATION_ROOT = "reports/experiment-validation"
# The experiments DVC runs (one stage each): the params file that defines each. The name of
# its outputs is that file's experiment.name.
EXPERIMENT_PARAMS: tuple[str, ...] = ("params.yaml", "profiles/experiment-clip-kd.yaml")


@dataclass(frozen=True)
class ExperimentFiles:
    """An experiment's outputs, from its ``experiment.name``: ``docs/<name>.json`` and so on."""

    name: str

    @property
    def result(self) -> str:
        return f"docs/{self.name}.json"

    @property
    def evals(self) -> str:
        return f"docs/{self.name}_evals.csv"

    @property
    def report(self) -> str:
        return f"docs/{self.name}.md"

    @property
    def plot(self) -> str:
        return f"docs/{self.name}.png"

    @property
    def all(self) -> tuple[str, str, str, str]:
        return (self.result, self.evals, self.report, self.plot)
