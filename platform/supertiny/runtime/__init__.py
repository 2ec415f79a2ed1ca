"""Where models run: each opened on its running engine or in-process through its backend, kept in one cache
within a memory budget, and one checked chat turn with a model."""
