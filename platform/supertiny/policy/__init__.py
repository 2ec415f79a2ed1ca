"""Routing between the tiny model and the LLM: policy kinds, token rewards, the router."""
