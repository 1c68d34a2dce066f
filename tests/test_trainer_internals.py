"""The names tunesmith wraps or sets on a trainer beyond its public API are checked before training: a transformers or
TRL that renamed one is refused, naming it, instead of training with atomic checkpoints, batch order or the time
budget silently off."""

from __future__ import annotations

import pytest
from transformers import Trainer
from trl import SFTTrainer

from tunesmith.errors import TunesmithError
from tunesmith.train.upstream import SFT_TRAINER_INTERNALS, TRAINER_INTERNALS, check_trainer_internals


def test_the_installed_trainers_have_every_name_tunesmith_relies_on():
    for name in TRAINER_INTERNALS:
        if not name.startswith("_created"):  # set in __init__: an instance attribute, checked below
            assert callable(getattr(Trainer, name)), name
    assert callable(SFTTrainer._track_num_input_tokens)


def test_a_trainer_that_renamed_one_is_refused_before_training_naming_it(tiny_model_dir, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_dir), processing_class=tokenizer,
                         train_dataset=Dataset.from_list([{"text": "a b c"}] * 4),
                         args=SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], max_steps=1))
    check_trainer_internals(trainer)  # the installed versions: nothing missing
    assert {"_total_train_tokens", "_track_num_input_tokens"} <= set(SFT_TRAINER_INTERNALS)

    class Renamed(type(trainer)):
        @property
        def _save_checkpoint(self):  # what a version that moved it away looks like from here
            raise AttributeError("_save_checkpoint")

    trainer.__class__ = Renamed
    del trainer._created_lr_scheduler
    with pytest.raises(TunesmithError, match=r"lacks _save_checkpoint \(checkpoints written whole.*_created_lr_sch"):
        check_trainer_internals(trainer)
