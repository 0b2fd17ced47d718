"""Reading and validating preference data, splits, prompt formats."""
