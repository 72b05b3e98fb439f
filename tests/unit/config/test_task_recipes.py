"""The recipes of the non-classification tasks compose to their task, model and data, and what the
model takes from the data (vocabulary, window, input width) reaches it."""

from __future__ import annotations

from helpers import compose_config

from framework.engine import build


def built(*overrides: str):
    cfg = compose_config(*overrides)
    task = build.build_task(cfg.task)
    facts = task.model_facts(build.build_data(cfg.data, cfg.seed, task))
    return cfg, build.build_model(cfg.model, facts)


def test_char_lm_is_the_transformer_on_the_help_topics():
    cfg, model = built("recipe=char_lm")
    assert cfg.task._target_ == "framework.tasks.language_model.LanguageModel"
    assert cfg.data.source._target_ == "framework.data.load_text" and cfg.data.source.path is None
    assert cfg.data.source.val_fraction == cfg.data.val_fraction  # the shared key is the one place
    assert type(model).__name__ == "Transformer"
    assert (cfg.model.vocab_size, cfg.model.block_size) == (103, 128)  # filled in from the text
    assert model.token_embedding.num_embeddings == 103 and model.position_embedding.num_embeddings == 128
    cfg, model = built("recipe=char_lm", "data.source.block_size=32", "data.val_fraction=0.1")
    assert cfg.model.block_size == 32 and cfg.data.source.val_fraction == 0.1


def test_regression_is_an_mlp_on_diabetes():
    cfg, model = built("recipe=regression")
    assert cfg.task._target_ == "framework.tasks.regression.Regression"
    assert cfg.data.source._target_ == "framework.data.load_diabetes" and cfg.data.source.standardize
    assert (list(cfg.model.input_shape), cfg.model.num_classes) == ([10], 1)
    assert model.net[1].in_features == 10 and model.net[-1].out_features == 1
