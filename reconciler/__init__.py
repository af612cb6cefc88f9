"""Reconcile the publication state of Opendatasoft datasets with a YAML manifest."""

__version__ = "0.1.0"
