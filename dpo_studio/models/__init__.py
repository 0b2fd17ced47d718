"""The per-architecture table, loading, the offline demo's bases, base-model licenses."""
