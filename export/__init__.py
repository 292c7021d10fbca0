"""Folding and packaging stages (reparameterized_model, coreml_package) and the export libraries."""
