"""Text pairs and the GLUE presets: the nine GLUE tasks (and SuperGLUE's pair tasks) read from local
files in the Hub's own layout and column names, pair loading and its bad input, and the pair encoding
(both texts in one sequence, BERT's segment ids)."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from lora_ft.config import DataConfig
from lora_ft.data import sources
from lora_ft.data.loading import LoadedData, load_data
from lora_ft.data.presets import PRESETS, apply_preset
from lora_ft.data.task import REGRESSION, SENTENCE2, SINGLE_LABEL, Task
from lora_ft.data.tokenization import tokenize_data, tokenized_cache_dir
from lora_ft.errors import LoraFtError

from .conftest import toy_rows, write_split

_NLI = ["entailment", "not_entailment"]
# GLUE as the Hub holds it (nyu-mll/glue): per task, its text columns, its label names (None: a float
# score), its labelled evaluation splits, and the primary metric GLUE ranks by.
GLUE = {
    "cola": (["sentence"], ["unacceptable", "acceptable"], ["validation"], "matthews_correlation"),
    "sst2": (["sentence"], ["negative", "positive"], ["validation"], "accuracy"),
    "mrpc": (
        ["sentence1", "sentence2"],
        ["not_equivalent", "equivalent"],
        ["validation"],
        "f1_accuracy_mean",
    ),
    "qqp": (["question1", "question2"], ["not_duplicate", "duplicate"], ["validation"], "f1_accuracy_mean"),
    "stsb": (["sentence1", "sentence2"], None, ["validation"], "pearson_spearman_mean"),
    "mnli": (
        ["premise", "hypothesis"],
        ["entailment", "neutral", "contradiction"],
        ["validation_matched", "validation_mismatched"],
        "accuracy",
    ),
    "qnli": (["question", "sentence"], _NLI, ["validation"], "accuracy"),
    "rte": (["sentence1", "sentence2"], _NLI, ["validation"], "accuracy"),
    "wnli": (["sentence1", "sentence2"], ["not_entailment", "entailment"], ["validation"], "accuracy"),
}
TEST_SPLITS = {"mnli": ["test_matched", "test_mismatched"]}


def _hub_split(columns: list[str], names: list[str] | None, n: int, offset: int, unlabelled: bool):
    label = datasets.Value("float32") if names is None else datasets.ClassLabel(names=names)
    features = datasets.Features(
        {**{c: datasets.Value("string") for c in columns}, "label": label, "idx": datasets.Value("int32")}
    )
    texts = [s for s, _ in toy_rows(n, offset)]
    rows = {c: [f"{c} {t}" for t in texts] for c in columns}
    if unlabelled:
        labels = [-1] * n
    else:
        labels = [i % 5 * 1.25 for i in range(n)] if names is None else [i % len(names) for i in range(n)]
    return datasets.Dataset.from_dict({**rows, "label": labels, "idx": list(range(n))}, features=features)


def write_hub_layout(root: Path, task: str) -> Path:
    """``root/<task>/<split>-00000-of-00001.parquet``, as the Hub's nyu-mll/glue repository holds them."""
    columns, names, evals, _ = GLUE[task]
    folder = root / task
    folder.mkdir(parents=True)
    splits = {"train": (12, 0, False)}
    splits.update({s: (6, 100 + 10 * i, False) for i, s in enumerate(evals)})
    splits.update({s: (4, 200, True) for s in TEST_SPLITS.get(task, ["test"])})
    for split, (n, offset, unlabelled) in splits.items():
        _hub_split(columns, names, n, offset, unlabelled).to_parquet(
            folder / f"{split}-00000-of-00001.parquet"
        )
    return folder


@pytest.fixture()
def hub(cache, tmp_path, monkeypatch):
    """The Hub's GLUE as local parquet files: ``glue/<task>`` loads ``tmp/hub/<task>/*.parquet``."""
    root = tmp_path / "hub"
    calls = []

    def fake_hub_load(path, config):
        calls.append((path, config))
        files = {p.name.split("-00000-")[0]: str(p) for p in sorted((root / config).glob("*.parquet"))}
        return datasets.load_dataset("parquet", data_files=files, cache_dir=str(tmp_path / "hf"))

    monkeypatch.setattr(sources, "hub_load", fake_hub_load)
    return root, calls


def test_every_glue_task_has_a_preset():
    assert {f"glue/{t}" for t in GLUE} <= set(PRESETS)
    assert {"super_glue/boolq", "super_glue/cb", "super_glue/rte"} <= set(PRESETS)


@pytest.mark.parametrize("task", [t for t in GLUE if t != "stsb"])
def test_glue_preset_reads_the_hubs_layout(hub, task):
    root, calls = hub
    write_hub_layout(root, task)
    columns, names, evals, primary = GLUE[task]
    loaded = load_data(DataConfig(name=f"glue/{task}"))
    assert calls == [("glue", task)]
    pair = len(columns) == 2
    expected_splits = ["train", "validation", *evals[1:]]
    assert list(loaded.splits) == expected_splits  # the unlabelled test split is not used as test
    for split, ds in loaded.splits.items():
        assert ds.column_names == (["sentence", SENTENCE2, "label"] if pair else ["sentence", "label"]), split
        assert ds["sentence"][0].startswith(columns[0] + " ")
        if pair:
            assert ds[SENTENCE2][0].startswith(columns[1] + " ")
    assert loaded.label_names == names
    assert loaded.splits["train"].features["label"].names == names
    assert loaded.task == Task(SINGLE_LABEL, tuple(names), pair, primary, f"glue/{task}")
    assert "test split unlabelled (all -1), not used" in loaded.source


def test_mnli_validates_on_matched_and_reports_mismatched(hub):
    root, _ = hub
    folder = write_hub_layout(root, "mnli")

    def premises(split: str) -> list[str]:
        path = folder / f"{split}-00000-of-00001.parquet"
        return datasets.load_dataset("parquet", data_files=str(path), split="train")["premise"][:]

    loaded = load_data(DataConfig(name="glue/mnli"))
    assert loaded.splits["validation"]["sentence"][:] == premises("validation_matched")
    assert loaded.splits["validation_mismatched"]["sentence"][:] == premises("validation_mismatched")
    assert premises("validation_matched") != premises("validation_mismatched")
    capped = load_data(DataConfig(name="glue/mnli", max_eval_samples=5))
    assert (len(capped.splits["validation"]), len(capped.splits["validation_mismatched"])) == (5, 5)


def test_stsb_preset_is_a_regression_pair_task_ranked_by_pearson_spearman():
    cfg = apply_preset(DataConfig(name="glue/stsb"))
    assert (cfg.text_column, cfg.text_pair_column, cfg.problem_type) == ("sentence1", "sentence2", REGRESSION)
    assert cfg.label_names is None  # one output, "score"
    assert PRESETS["glue/stsb"].primary_metric == "pearson_spearman_mean"


def test_stsb_reads_the_hubs_layout_as_regression_with_float_labels_and_one_output(hub, tiny_bert_dir):
    import torch

    from lora_ft.config import ModelConfig
    from lora_ft.data.metrics import primary, task_metrics
    from lora_ft.training.modeling import load_model

    root, calls = hub
    write_hub_layout(root, "stsb")
    loaded = load_data(DataConfig(name="glue/stsb"))
    assert calls == [("glue", "stsb")]
    assert list(loaded.splits) == ["train", "validation"]  # the unlabelled test split is not used
    assert loaded.task == Task(REGRESSION, ("score",), True, "pearson_spearman_mean", "glue/stsb")
    assert loaded.task.num_labels == 1
    train = loaded.splits["train"]
    assert train.column_names == ["sentence", SENTENCE2, "label"]
    assert train.features["label"].dtype in ("float32", "float64")
    assert train["label"][:] == [i % 5 * 1.25 for i in range(12)]  # the scores as written, not class ids
    assert train["sentence"][0].startswith("sentence1 ") and train[SENTENCE2][0].startswith("sentence2 ")

    model = load_model(ModelConfig(name=str(tiny_bert_dir)), loaded.task).model
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"
    assert model.classifier.out_features == 1
    target = torch.tensor([0.0, 1.0, 2.0, 4.0])
    out = model(input_ids=torch.tensor([[101, 2000, 102]] * 4), labels=target)
    assert out.logits.shape == (4, 1)
    torch.testing.assert_close(out.loss, torch.nn.functional.mse_loss(out.logits.squeeze(-1), target))
    scores = [[0.5], [1.0], [3.0], [2.5]]  # ranks 1 2 4 3 against 1 2 3 4: Spearman 0.8
    m = task_metrics(loaded.task, scores, target.numpy())
    assert m["pearson"] == pytest.approx(0.7789240586) and m["spearman"] == pytest.approx(0.8)
    assert primary(loaded.task, m) == pytest.approx((0.7789240586 + 0.8) / 2)


def test_preset_labels_integer_labels_and_the_user_wins(hub, tmp_path):
    root, _ = hub
    folder = root / "rte"
    folder.mkdir(parents=True)
    features = datasets.Features(
        {
            "sentence1": datasets.Value("string"),
            "text_b": datasets.Value("string"),
            "label": datasets.Value("int64"),
        }
    )
    for split, offset in (("train", 0), ("validation", 100)):
        texts = [s for s, _ in toy_rows(8, offset)]
        datasets.Dataset.from_dict(
            {"sentence1": texts, "text_b": texts[::-1], "label": [i % 2 for i in range(8)]}, features=features
        ).to_parquet(folder / f"{split}-00000-of-00001.parquet")
    loaded = load_data(DataConfig(name="glue/rte", text_pair_column="text_b"))
    assert loaded.label_names == _NLI  # plain integers, named by the preset
    assert loaded.splits["train"][SENTENCE2][:] == [s for s, _ in toy_rows(8)][::-1]


def test_label_names_that_disagree_with_the_hubs_are_an_error(hub):
    root, _ = hub
    write_hub_layout(root, "qnli")
    assert load_data(DataConfig(name="glue/qnli", label_names=list(_NLI))).label_names == _NLI
    with pytest.raises(LoraFtError, match=r"^data.label_names \(a, b\) and the label names .* disagree"):
        load_data(DataConfig(name="glue/qnli", label_names=["a", "b"]))


def test_super_glue_pair_presets_use_the_hubs_columns():
    boolq = apply_preset(DataConfig(name="super_glue/boolq"))
    assert (boolq.text_column, boolq.text_pair_column, boolq.label_names) == (
        "question",
        "passage",
        ["False", "True"],
    )
    assert PRESETS["super_glue/cb"].primary_metric == "f1_accuracy_mean"
    assert apply_preset(DataConfig(name="super_glue/rte")).text_pair_column == "hypothesis"
    mine = DataConfig(name="reviews.csv", text_column="review")
    assert apply_preset(mine) is mine  # a file or directory has no preset


def _pair_dir(tmp_path: Path, rows: list[dict]) -> Path:
    d = tmp_path / "pairs"
    d.mkdir()
    for split in ("train", "validation"):
        (d / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return d


def test_pair_column_that_does_not_exist_names_the_key(cache, tmp_path):
    path = write_split(tmp_path / "d.csv", toy_rows(6))
    with pytest.raises(LoraFtError) as info:
        load_data(DataConfig(name=str(path), text_pair_column="hypothesis"))
    assert str(info.value) == (
        f"data file {path} has no column 'hypothesis'; columns are: sentence, label (set data.text_pair_column)"
    )


@pytest.mark.parametrize("cell", ["", "   ", None, 3])
def test_empty_or_non_text_pair_cell_is_an_error_naming_the_row_and_key(cache, tmp_path, cell):
    rows = [{"a": "fine", "b": "also fine", "label": 0}, {"a": "ok", "b": cell, "label": 1}]
    d = _pair_dir(tmp_path, rows)
    with pytest.raises(LoraFtError) as info:
        load_data(DataConfig(name=str(d), text_column="a", text_pair_column="b"))
    message = str(info.value)
    assert "at row 2 of data file" in message and "(column 'b', data.text_pair_column)" in message
    assert "\n" not in message


def test_pair_and_text_column_must_differ(cache, tmp_path):
    d = _pair_dir(tmp_path, [{"a": "x", "b": "y", "label": 0}, {"a": "z", "b": "w", "label": 1}])
    with pytest.raises(LoraFtError, match="must be three different columns"):
        load_data(DataConfig(name=str(d), text_column="a", text_pair_column="a"))


def _loaded_pairs(pairs: list[tuple[str, str]], text_pair: bool = True) -> LoadedData:
    columns = {"sentence": [a for a, _ in pairs], SENTENCE2: [b for _, b in pairs]}
    features = {"sentence": datasets.Value("string"), SENTENCE2: datasets.Value("string")}
    if not text_pair:
        columns.pop(SENTENCE2)
        features.pop(SENTENCE2)
    ds = datasets.Dataset.from_dict(
        {**columns, "label": [0] * len(pairs)},
        features=datasets.Features({**features, "label": datasets.ClassLabel(names=["no", "yes"])}),
    )
    task = Task(SINGLE_LABEL, ("no", "yes"), text_pair)
    return LoadedData(datasets.DatasetDict({"train": ds}), ["no", "yes"], "test", {}, task)


def test_pairs_are_one_sequence_with_the_separator_and_bert_segment_ids(cache, minilm_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir)  # the built-in MiniLM is a BERT
    data = _loaded_pairs([("the cat sat", "a dog ran far")])
    row = tokenize_data(data, tok, max_length=32)["train"][0]
    a, b = (
        tok("the cat sat", add_special_tokens=False)["input_ids"],
        tok("a dog ran far", add_special_tokens=False)["input_ids"],
    )
    cls, sep = tok.cls_token_id, tok.sep_token_id
    assert row["input_ids"] == [cls, *a, sep, *b, sep]
    assert row["token_type_ids"] == [0] * (len(a) + 2) + [1] * (len(b) + 1)
    assert row["length"] == len(a) + len(b) + 3
    assert set(row) == {"input_ids", "attention_mask", "token_type_ids", "labels", "length"}


def test_pairs_truncate_the_longer_text_first(cache, minilm_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir)
    long = " ".join(f"word{i}" for i in range(40))
    row = tokenize_data(_loaded_pairs([(long, "short one")]), tok, max_length=16)["train"][0]
    b = tok("short one", add_special_tokens=False)["input_ids"]
    assert len(row["input_ids"]) == row["length"] == 16
    assert row["input_ids"][-len(b) - 1 : -1] == b  # the short text whole, the long one cut
    assert row["token_type_ids"].count(1) == len(b) + 1


def test_the_tokenized_cache_key_says_whether_inputs_are_pairs(cache, minilm_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir)
    pairs = [("the cat sat", "a dog ran")]
    as_pairs = _loaded_pairs(pairs)
    as_single = LoadedData(
        as_pairs.splits, as_pairs.label_names, "test", {}, Task(SINGLE_LABEL, ("no", "yes"))
    )
    assert tokenized_cache_dir(as_pairs, tok, 32) != tokenized_cache_dir(as_single, tok, 32)


def test_pair_lines_need_exactly_one_tab(tmp_path):
    import io

    from lora_ft.data.textlines import read_pair_lines, read_pair_table

    good = io.BytesIO(b"a one\tb one\n\nsecond a\tsecond b\r\n")
    assert list(read_pair_lines(good, "stdin")) == [("a one", "b one"), ("second a", "second b")]
    with pytest.raises(LoraFtError, match=r"^line 2 of stdin has no tab; this model classifies text pairs"):
        list(read_pair_lines(io.BytesIO(b"a\tb\nonly one text\n"), "stdin"))
    table = tmp_path / "pairs.csv"
    table.write_text('sentence,sentence2\n"x, y",z\n', encoding="utf-8")
    assert list(read_pair_table(table, ("sentence", "sentence2"))) == [("x, y", "z")]
    with pytest.raises(LoraFtError, match="has no column 'hypothesis'"):
        list(read_pair_table(table, ("sentence", "hypothesis")))
