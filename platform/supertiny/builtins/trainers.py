"""Built-in trainers: sft, rft, dpo, grpo and kd (stage 2), and heal (kd of a pruned model from its parent, stage
``healed``)."""

import supertiny
from supertiny.train.dpo_trainer import DPOTrainer
from supertiny.train.grpo_trainer import GRPOTrainer
from supertiny.train.heal_trainer import HealTrainer
from supertiny.train.kd_trainer import KDTrainer
from supertiny.train.rft_trainer import RFTTrainer
from supertiny.train.sft_trainer import SFTTrainer


@supertiny.hookimpl(trylast=True)
def register_trainers(register):
    register(SFTTrainer())
    register(RFTTrainer())
    register(DPOTrainer())
    register(GRPOTrainer())
    register(KDTrainer())
    register(HealTrainer())
