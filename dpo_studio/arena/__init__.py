"""Votes, the Hub votes store, ratings."""
