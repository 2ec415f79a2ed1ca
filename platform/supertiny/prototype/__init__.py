"""Stage 1's prototype: the task as a function-call pipeline on the teacher LLM."""
