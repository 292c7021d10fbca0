"""``clipforge experiment``: arms of student training compared on the held-out benchmark (docs/experiment.md)."""
