"""Immutable, versioned dataset snapshots of verified samples or logged traffic, and their export."""
