"""Where ``clipforge experiment`` writes its result, relative to the project root: the outputs of
the experiment's DVC stage (``experiments/dvc.yaml``). A module of its own so that the dvc.yaml
generator and the CLI read the names without importing torch."""

RESULT_FILE = "docs/experiment.json"
EVALS_FILE = "docs/experiment_evals.csv"
REPORT_FILE = "docs/experiment.md"
PLOT_FILE = "docs/experiment.png"
COMMAND = "clipforge experiment"
# With experiment.split = validation (tuning), the same files under this folder instead.
VALIDATION_ROOT = "reports/experiment-validation"
