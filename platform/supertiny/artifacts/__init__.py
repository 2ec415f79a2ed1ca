"""Hugging Face model artifacts, below every stage that reads them: what a model's files say without loading
them (parameter counts, dtype, size), loading and saving a model and its tokenizer, the chat template that
renders prompts and training conversations alike, and the machine facts (compute dtype, threads, speed)
that decide how a model runs. The train, compress and models packages all build on it; it imports none
of them."""
