"""Options of ``supertiny compress prune``."""

import dataclasses

from supertiny.compress.compress_config import CompressConfig
from supertiny.errors import InvalidInputError
from supertiny.options import option

IMPORTANCE = ("activation", "magnitude")


@dataclasses.dataclass
class PruneConfig(CompressConfig):
    """Structured pruning: remove MLP channels, key/value groups with their query heads, and/or whole layers,
    ranked by their importance on the snapshot's own traffic, down to a parameter budget."""

    target_params: str | None = option(None, "Parameters to prune to: 0.4B, 400M or 400000000 (a tied embedding "
                                       "and output head count once).")
    ratio: float | None = option(None, "Fraction of the parameters to remove (0.2 = 20%), instead of "
                                 "--target-params.")
    mlp: bool = option(True, "Prune MLP channels (gate/up rows and down columns), to the widest MLP that meets the "
                       "target; --no-mlp prunes only the layers and groups asked for.")
    drop_layers: int = option(0, "Remove this many whole layers: those that change the hidden state least on the "
                              "calibration data (Block Influence).")
    drop_kv_groups: int = option(0, "Remove this many key/value groups from every layer, each with the query heads "
                                 "that read it, so the grouped-query layout stays valid.")
    multiple_of: int = option(16, "Round the pruned MLP width down to a multiple of this.")
    importance: str = option("activation", "How channels and groups are ranked: activation (Wanda-style |W|·||X|| "
                             "on the calibration data) or magnitude (weights only, no --data needed).",
                             choices=IMPORTANCE)
    calibration_samples: int = option(64, "Conversations of the snapshot to calibrate on.")
    calibration_split: str = option("train", "Snapshot split to calibrate on.")
    max_length: int = option(512, "Tokens per calibration conversation; longer ones are cut at the end.")
    seed: int = option(0, "Seed of the calibration draw.")

    def validate(self) -> None:
        super().validate()
        if (self.target_params is None) == (self.ratio is None):
            raise InvalidInputError("give either --target-params or --ratio")
        if self.ratio is not None and not 0.0 <= self.ratio < 1.0:
            raise InvalidInputError("--ratio must be in [0, 1)")
        for name in ("drop_layers", "drop_kv_groups"):
            if getattr(self, name) < 0:
                raise InvalidInputError(f"--{name.replace('_', '-')} must be at least 0")
        for name in ("multiple_of", "calibration_samples"):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"--{name.replace('_', '-')} must be at least 1")
        if self.max_length < 2:
            raise InvalidInputError("--max-length must be at least 2")
        if self.importance not in IMPORTANCE:
            raise InvalidInputError(f"unknown importance {self.importance!r}", hint=" or ".join(IMPORTANCE))

    @property
    def needs_data(self) -> bool:
        return self.importance == "activation" or self.drop_layers > 0

    def target(self, total: int) -> int:
        """The parameter budget for a model of ``total`` parameters."""
        from supertiny.compress.structure import parse_param_count

        if self.ratio is not None:
            return int(total * (1.0 - self.ratio))
        return parse_param_count(self.target_params) or total
