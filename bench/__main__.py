"""``python -m bench`` (``make bench``): the bench suite and its combined report (:mod:`bench.suite`)."""

from bench.suite import main

if __name__ == "__main__":
    main()
