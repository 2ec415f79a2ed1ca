"""The model layer: inference backends, tool-call parsing, the registry of model versions and the
offline default model packages."""
