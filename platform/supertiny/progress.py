"""Progress of a long job (loading, sampling, training, calibrating): the interface trainers and compressors
report phases through, and the terminal bar the CLI commands and the demo draw it with."""

from typing import Any, Protocol


class Progress(Protocol):
    """Where a long job reports what it is doing: phases (loading, sampling, training) with counts."""

    def phase(self, description: str, total: int | None = None) -> None:
        """A new phase starts; ``total`` is the count ``update`` goes up to, when known."""

    def update(self, done: int, **info: Any) -> None:
        """``done`` of the phase's total; ``info`` is shown beside it (loss=..., pass_rate=...)."""


class NullProgress:
    """Progress that shows nothing."""

    def phase(self, description: str, total: int | None = None) -> None:
        pass

    def update(self, done: int, **info: Any) -> None:
        pass


class BarProgress:
    """A tqdm bar per phase (loading, sampling, training) with the loss or pass rate beside it."""

    def __init__(self) -> None:
        self.bar: Any = None

    def phase(self, description: str, total: int | None = None) -> None:
        from tqdm import tqdm

        self.close()
        unit = "step" if "train" in description else "sample"
        bar_format = None if total else "{desc} [{elapsed}]"  # a phase without a count: just its time
        self.bar = tqdm(desc=description, total=total, dynamic_ncols=True, unit=unit, bar_format=bar_format)

    def update(self, done: int, **info: Any) -> None:
        if self.bar is None:
            self.phase("working")
        if self.bar.total is None and done:
            self.bar.bar_format = None
        self.bar.n = done
        if info:
            self.bar.set_postfix(info, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def quiet_libraries() -> None:
    """The command draws its own progress: silence the libraries' bars and info logs."""
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity_error()
