"""The `dpo-studio` verbs and the train command's run-and-summarise."""
