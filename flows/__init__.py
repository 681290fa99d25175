"""Prefect flows: the DAG of stages, with typed parameters that the Prefect UI renders as forms."""
