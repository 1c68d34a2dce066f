"""The names tunesmith wraps or sets on a trainer beyond its public API are checked before training: a transformers or
TRL that renamed one is refused, naming it, instead of training with atomic checkpoints, batch order or the time
budget silently off."""

from __future__ import annotations

import pytest
from transformers import Trainer
from trl import SFTTrainer

from tunesmith.errors import TunesmithError
from tunesmith.train.micro_batches import merging
from tunesmith.train.upstream import SFT_TRAINER_INTERNALS, TRAINER_INTERNALS, check_trainer_internals


def test_the_installed_trainers_define_every_method_tunesmith_relies_on():
    for name in TRAINER_INTERNALS:
        if not name.startswith("_created"):  # set in __init__: an instance attribute, checked below
            assert callable(getattr(Trainer, name)), name
    assert callable(SFTTrainer._track_num_input_tokens)


def test_a_trainer_whose_upstream_renamed_one_is_refused_even_where_tunesmith_overrides_it(tiny_model_dir, tmp_path):
    """tunesmith's micro-batch trainer overrides get_batch_samples and _track_num_input_tokens itself, so the check
    reads transformers' and TRL's own classes: an override of a name upstream no longer calls does nothing."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig

    def build(trainer_class: type) -> SFTTrainer:
        return trainer_class(model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                             processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
                             train_dataset=Dataset.from_list([{"text": "a b c"}] * 4),
                             args=SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], max_steps=1))

    trainer = build(merging(SFTTrainer))
    check_trainer_internals(trainer)  # the installed versions: nothing missing
    assert {"_total_train_tokens", "_track_num_input_tokens"} <= set(SFT_TRAINER_INTERNALS)


    class LaterTrainer:  # a transformers Trainer that dropped get_batch_samples, as far as names go
        __module__ = "transformers.trainer"

        def _save_checkpoint(self): ...
        def _get_train_sampler(self): ...
        def _prepare_inputs(self): ...

    class Ours(LaterTrainer):
        def get_batch_samples(self): ...  # tunesmith's override, of a name the Trainer no longer calls

    later = Ours()
    later._created_lr_scheduler = False
    assert hasattr(later, "get_batch_samples")
    with pytest.raises(TunesmithError, match=r"lacks get_batch_samples \(no step past max_steps") as refused:
        check_trainer_internals(later)
    from importlib.metadata import requires

    floor = next(r for r in requires("tunesmith") if r.startswith("transformers")).replace(" ", "")
    assert f"'{floor}'" in refused.value.hint  # the floors pyproject.toml declares, not a copy that drifts
    del later._created_lr_scheduler
    with pytest.raises(TunesmithError, match=r"get_batch_samples .*; _created_lr_scheduler \(the time budget"):
        check_trainer_internals(later)
