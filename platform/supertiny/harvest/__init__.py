"""Stage 1 at scale: run the prototype agent over a domain's tasks into the store."""
