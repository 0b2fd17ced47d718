"""The per-family recipe, the named trainers, seq2seq DPO, speed features, signals, progress log."""
