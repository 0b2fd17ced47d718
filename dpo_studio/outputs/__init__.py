"""What a run leaves: the report, plots and model cards."""
