"""Publishing to the Hub and the Space deploy."""
