"""Config: defaults < YAML < --set, typed overrides, unknown keys and wrong types are errors."""

from pathlib import Path

import pytest

from lora_ft.config import RunConfig, config_from_dict, dump_config, load_config
from lora_ft.errors import LoraFtError

SHIPPED = Path(__file__).parent.parent / "lora_ft" / "configs"
CONFIGS = sorted(SHIPPED.glob("*.yaml"))


def test_the_defaults_are_the_recommended_recipe():
    """``lora-ft train`` with no config runs the tuned recipe (README, "The demo"), not q/v at 5e-4 for 3 epochs."""
    cfg = load_config()
    assert cfg.model.name == "minilm-l6"
    assert cfg.data.name == "rt-sentences" and cfg.data.max_length == 128
    assert cfg.lora.r == 8 and cfg.lora.alpha == 16.0
    assert cfg.lora.scaling == 2.0
    assert cfg.lora.targets == "all-linear" and cfg.lora.dropout == 0.0
    assert cfg.train.method == "lora" and cfg.train.epochs == 1.0 and cfg.train.batch_size == 32
    assert {m: cfg.train.lr_for(m) for m in ("lora", "full", "head")} == {
        "lora": 2e-3,
        "full": 5e-5,
        "head": 2e-3,
    }
    assert cfg.train.warmup_ratio == 0.06 and cfg.train.seed == 42


def test_default_yaml_only_restates_the_defaults():
    assert load_config(SHIPPED / "default.yaml") == RunConfig()
    assert {p.name for p in CONFIGS} >= {"default.yaml", "smoke.yaml", "compare.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_parses_and_says_how_to_run_it(path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    first = path.read_text().splitlines()[0]
    assert first.startswith("# "), f"{path.name} must start with a comment saying how to run it"
    assert "lora-ft " in path.read_text().split("\n\n")[0] or "Run:" in path.read_text()


def test_precedence_yaml_then_set(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("lora:\n  r: 4\n  alpha: 8\ntrain:\n  learning_rate: 1e-3\n")
    cfg = load_config(f, ["lora.r=16", "lora.targets=[query,key,value]"])
    assert cfg.lora.r == 16  # --set wins over YAML
    assert cfg.lora.alpha == 8.0  # YAML wins over the default
    assert cfg.lora.targets == ["query", "key", "value"]
    assert cfg.train.learning_rate == 1e-3  # "1e-3" without a dot is a YAML string; accepted as a float
    assert cfg.train.lr_for("full") == 1e-3  # an explicit learning_rate applies to every method
    assert cfg.lora.scaling == 0.5


def test_targets_accept_string_and_regex():
    assert load_config(None, ["lora.targets=all-linear"]).lora.targets == "all-linear"
    assert load_config(None, [r"lora.targets=.*\.(query|value)"]).lora.targets == r".*\.(query|value)"


def test_rslora_scaling():
    cfg = load_config(None, ["lora.r=16", "lora.alpha=8", "lora.rslora=true"])
    assert cfg.lora.scaling == pytest.approx(8 / 4)


@pytest.mark.parametrize(
    ("overrides", "phrase"),
    [
        (["lora.r=0"], "lora.r must be an integer >= 1, got 0"),
        (["lora.r=-3"], "lora.r must be an integer >= 1"),
        (["lora.r=2.5"], "lora.r must be int, got 2.5"),
        (["lora.r=abc"], "lora.r must be int, got 'abc'"),
        (["lora.r=true"], "lora.r must be int, got True"),
        (["lora.dropout=1.0"], "lora.dropout must be in [0, 1), got 1.0"),
        (["lora.dropout=-0.1"], "lora.dropout must be in [0, 1)"),
        (["lora.alpha=0"], "lora.alpha must be > 0"),
        (["lora.init=xavier"], "lora.init must be kaiming or gaussian"),
        (["lora.init=gaussian", "lora.init_std=0"], "lora.init_std must be > 0, got 0"),
        (["lora.init=gaussian", "lora.init_std=-0.01"], "lora.init_std must be > 0, got -0.01"),
        (["lora.init=gaussian", "lora.init_std=nan"], "lora.init_std must be a finite number, got nan"),
        (["lora.init=gaussian", "lora.init_std=inf"], "lora.init_std must be a finite number, got inf"),
        (["lora.init_std=0.01"], "lora.init_std is for lora.init=gaussian, not kaiming"),
        (["lora.targets=[]"], "lora.targets is an empty list"),
        (["lora.rank=8"], "unknown config key 'lora.rank'"),
        (["lora.alhpa=8"], "did you mean 'alpha'?"),
        (["optimizer.lr=1"], "unknown config key 'optimizer'"),
        (["train.method=qlora"], "train.method must be one of lora, full, head"),
        (["train.precision=fp8"], "train.precision must be one of fp32, bf16, fp16"),
        (["train.batch_size=0"], "train.batch_size must be >= 1"),
        (["train.learning_rate=-1"], "train.learning_rate must be > 0"),
        (["train.learning_rates={lora: 1e-3, qlora: 1e-3}"], "unknown method 'qlora'"),
        (["train.warmup_ratio=1.5"], "train.warmup_ratio must be in [0, 1)"),
        (["data.max_length=2"], "data.max_length must be >= 8"),
        (["data.max_train_samples=0"], "data.max_train_samples must be >= 1"),
        (["lora=3"], "lora must be a mapping"),
        (["lora.r"], "is not key=value"),
        (["=3"], "has no key"),
    ],
)
def test_bad_overrides_name_the_problem(overrides, phrase):
    with pytest.raises(LoraFtError) as err:
        load_config(None, overrides)
    assert phrase in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(LoraFtError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lora: [r: 8\n")
    with pytest.raises(LoraFtError, match="is not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(LoraFtError, match="must hold a mapping"):
        load_config(listy)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty) == RunConfig()


def test_saved_config_round_trips_with_versions_record():
    cfg = load_config(
        None, ["lora.r=4", "train.trainer={gradient_checkpointing_kwargs: {use_reentrant: false}}"]
    )
    import yaml

    data = yaml.safe_load(dump_config(cfg, {"versions": {"torch": "x"}}))
    assert data["versions"] == {"torch": "x"}
    assert config_from_dict(data) == cfg


BEST_STEPS = ["train.load_best_model=true", "train.eval_strategy=steps", "train.save_strategy=steps"]


@pytest.mark.parametrize(
    ("overrides", "phrase"),
    [
        (["train.metric_for_best=precision"], "train.metric_for_best must be one of loss, accuracy, f1, macro_f1, matthews_correlation, f1_accuracy_mean, micro_f1, subset_accuracy, pearson, spearman, pearson_spearman_mean, mse, mae, entity_f1, entity_precision, entity_recall, token_accuracy, got 'precision'"),
        (["train.early_stopping_patience=0"], "train.early_stopping_patience must be >= 1, got 0"),
        (
            ["train.early_stopping_patience=2", "train.eval_strategy=no"],
            "train.early_stopping_patience needs evaluations to compare: set train.eval_strategy to steps or epoch",
        ),
        (
            ["train.load_best_model=true", "train.eval_strategy=no", "train.save_strategy=no"],
            "train.load_best_model needs evaluations to compare",
        ),
        (
            ["train.load_best_model=true", "train.save_strategy=no"],
            "set train.save_strategy to train.eval_strategy (epoch), got no",
        ),
        (
            [*BEST_STEPS, "train.eval_steps=4", "train.save_steps=6"],
            "set train.save_steps to a multiple of the 4 steps between evaluations, got 6",
        ),
        (BEST_STEPS, "a multiple of the 25 steps between evaluations, got None"),  # eval_steps: logging_steps
    ],
)  # fmt: skip
def test_best_checkpoint_settings_are_refused_in_our_words_before_the_trainer(overrides, phrase):
    with pytest.raises(LoraFtError) as err:
        load_config(None, overrides)
    assert phrase in str(err.value)
    assert "\n" not in str(err.value)


def test_best_checkpoint_settings_map_onto_the_training_arguments(tmp_path):
    from lora_ft.training.arguments import training_arguments

    best = training_arguments(
        load_config(None, [*BEST_STEPS, "train.save_steps=50", "train.metric_for_best=accuracy"]),
        "lora",
        tmp_path,
    )
    assert best.load_best_model_at_end and best.metric_for_best_model == "accuracy" and best.greater_is_better
    assert best.restore_callback_states_from_checkpoint  # a resume continues early stopping's count
    stopping = training_arguments(load_config(None, ["train.early_stopping_patience=3"]), "lora", tmp_path)
    assert not stopping.load_best_model_at_end
    assert stopping.metric_for_best_model == "loss" and stopping.greater_is_better is False
    # Neither: no metric, so the Trainer keeps no "best" checkpoint from rotation.
    assert training_arguments(load_config(None), "lora", tmp_path).metric_for_best_model is None
