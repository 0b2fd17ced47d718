"""Argument dataclasses, inherited TRL/Transformers flags, the precision and device policy."""
