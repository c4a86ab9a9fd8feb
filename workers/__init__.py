"""Execution: model and data sources and the search pipeline (phases). The Ray layer that runs
the pipeline on a cluster comes with the service."""
