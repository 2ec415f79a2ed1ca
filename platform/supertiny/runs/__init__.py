"""Runs of registered algorithms: each turns a registered model into a new model version."""
