"""Injection into any nn.Module: a plain-torch toy transformer and tiny random HF classifiers."""

import copy

import pytest
import torch
from torch import nn

from lora_ft.errors import LoraFtError
from lora_ft.lora import LoRALinear
from lora_ft.lora.inject import (
    count_parameters,
    freeze_for_method,
    inject_lora,
    load_lora_state_dict,
    lora_layers,
    lora_state_dict,
    merge_and_unload,
    merge_lora,
    set_lora_disabled,
    unmerge_lora,
)
from lora_ft.lora.targets import default_head, default_targets, linear_names, match_targets, targets_table

D, LAYERS, LABELS, VOCAB, R = 32, 2, 2, 100, 4


class Attention(nn.Module):
    def __init__(self, d: int, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.Wq, self.Wk, self.Wv, self.Wo = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):  # (B, T, C)
        b, t, c = x.shape
        q, k, v = (w(x).view(b, t, self.heads, -1).transpose(1, 2) for w in (self.Wq, self.Wk, self.Wv))
        y = nn.functional.scaled_dot_product_attention(q, k, v)  # (B, H, T, C/H)
        return self.Wo(y.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.attn = Attention(d)
        self.ffn = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class ToyClassifier(nn.Module):
    """No ``config``: an architecture the defaults know nothing about."""

    def __init__(self, d: int = D, layers: int = LAYERS):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d)
        self.blocks = nn.ModuleList(Block(d) for _ in range(layers))
        self.pre_classifier = nn.Linear(d, d)
        self.classifier = nn.Linear(d, LABELS)

    def forward(self, ids):  # (B, T) -> (B, LABELS)
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        return self.classifier(torch.tanh(self.pre_classifier(x[:, 0])))


def tiny(kind: str) -> nn.Module:
    import transformers as tf

    torch.manual_seed(0)
    bert_like = dict(
        vocab_size=VOCAB, hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=40, num_labels=LABELS, initializer_range=0.2,
    )  # fmt: skip
    if kind == "toy":
        model = ToyClassifier()
    elif kind == "distilbert":
        config = tf.DistilBertConfig(
            vocab_size=VOCAB, dim=D, n_layers=LAYERS, n_heads=2, hidden_dim=64, max_position_embeddings=40,
            num_labels=LABELS, initializer_range=0.2,
        )  # fmt: skip
        model = tf.DistilBertForSequenceClassification(config)
    elif kind == "bert":
        model = tf.BertForSequenceClassification(tf.BertConfig(**bert_like))
    elif kind == "roberta":
        model = tf.RobertaForSequenceClassification(tf.RobertaConfig(**bert_like))
    elif kind == "electra":
        model = tf.ElectraForSequenceClassification(tf.ElectraConfig(embedding_size=D, **bert_like))
    return model.eval()


def ids(batch: int = 3, length: int = 7) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(1))


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)
    return out if isinstance(out, torch.Tensor) else out.logits


def randomize_lora(model: nn.Module, seed: int = 3) -> None:
    """Non-zero B everywhere, so merge tests compare something that differs from the base."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.5)


HF = ["distilbert", "bert", "roberta", "electra"]
QV = {"distilbert": ("q_lin", "v_lin"), "bert": ("query", "value"), "roberta": ("query", "value")}
QV["electra"] = QV["bert"]
HEAD = {"distilbert": ["pre_classifier", "classifier"], "bert": ["classifier"]}
HEAD["roberta"] = HEAD["electra"] = HEAD["bert"]


# (a) a plain-torch model


def test_toy_named_targets_and_exact_output_at_init():
    model = tiny("toy")
    x = ids()
    before = logits(model, x)
    report = inject_lora(model, ["Wq", "Wv"], r=R, alpha=8, head=["classifier"])
    assert [w.name for w in report.wrapped] == [
        f"blocks.{i}.attn.{w}" for i in range(LAYERS) for w in ("Wq", "Wv")
    ]
    assert len(lora_layers(model)) == 2 * LAYERS
    assert (logits(model, x) - before).abs().max().item() == 0.0
    assert (
        "blocks.0.attn.Wq.base.weight" in model.state_dict()
        and "blocks.0.attn.Wq.lora_A" in model.state_dict()
    )


@pytest.mark.parametrize(
    "spec",
    [
        r"blocks\.\d+\.attn\.W[qv]",
        r".*\.W(q|v)",
        ["attn.Wq", "attn.Wv"],
        ["blocks.0.attn.Wq", "blocks.1.attn.Wq", "Wv"],
    ],
)
def test_toy_regex_suffix_and_full_name_specs(spec):
    expected = sorted(f"blocks.{i}.attn.{w}" for i in range(LAYERS) for w in ("Wq", "Wv"))
    assert sorted(match_targets(tiny("toy"), spec)) == expected


def test_toy_all_linear_excludes_the_head():
    model = tiny("toy")
    head = ["pre_classifier", "classifier"]
    names = match_targets(model, "all-linear", exclude=head)
    assert len(names) == 6 * LAYERS and not any(n.endswith("classifier") for n in names)
    report = inject_lora(model, "all-linear", r=R, alpha=8, head=head)
    assert len(report.wrapped) == 6 * LAYERS and report.head == head
    assert set(linear_names(model)) == set(linear_names(tiny("toy")))  # wrapped ones keep their names


# (b), (c) default targets and heads on tiny HF classifiers


@pytest.mark.parametrize("kind", HF)
def test_default_targets_wrap_query_and_value_of_every_layer(kind):
    model = tiny(kind)
    assert default_targets(model) == list(QV[kind])
    report = inject_lora(model, None, r=R, alpha=8, head=default_head(model))
    wrapped = [w.name for w in report.wrapped]
    assert len(wrapped) == 2 * LAYERS
    assert sorted(n.rsplit(".", 1)[-1] for n in wrapped) == sorted(QV[kind] * LAYERS)


@pytest.mark.parametrize("kind", HF)
def test_default_head(kind):
    assert default_head(tiny(kind)) == HEAD[kind]


def test_classifier_does_not_catch_pre_classifier():
    model = tiny("distilbert")
    report = inject_lora(model, None, r=R, alpha=8, head=["classifier"])
    assert report.head == ["classifier"]
    assert not any(p.requires_grad for p in model.pre_classifier.parameters())
    assert all(p.requires_grad for p in model.classifier.parameters())


def test_bert_pooler_joins_the_head_when_newly_initialised():
    model = tiny("bert")
    assert default_head(model, ["bert.pooler.dense", "classifier"]) == ["classifier", "bert.pooler"]
    assert default_head(model, ["classifier"]) == ["classifier"]


def test_roberta_all_linear_leaves_the_classification_head_alone():
    model = tiny("roberta")
    names = match_targets(model, "all-linear", exclude=default_head(model))
    assert len(names) == 6 * LAYERS  # the sequence classifier has no pooler
    assert not any(n.startswith("classifier") for n in names)


# (d), (e) trainable parameters: closed form, gradients, base untouched by a step


def head_params_closed_form(kind: str) -> int:
    classifier = D * LABELS + LABELS
    return classifier + (D * D + D if kind in ("distilbert", "roberta", "electra") else 0)


@pytest.mark.parametrize("kind", HF)
def test_trainable_count_closed_form(kind):
    model = tiny(kind)
    total_before = count_parameters(model)[1]
    report = inject_lora(model, None, r=R, alpha=8, head=default_head(model))
    lora = 2 * LAYERS * R * (D + D)
    assert report.lora_params == lora and report.head_params == head_params_closed_form(kind)
    assert count_parameters(model) == (lora + report.head_params, total_before + lora)
    assert report.trainable_params == lora + report.head_params and report.total_params == total_before + lora
    assert 0 < report.trainable_fraction < 0.2


@pytest.mark.parametrize("kind", ["distilbert", "bert"])
def test_only_lora_and_head_get_grads_and_base_is_bit_identical_after_a_step(kind):
    model = tiny(kind)
    head = default_head(model)
    inject_lora(model, None, r=R, alpha=8, head=head)
    randomize_lora(model)  # with B = 0, A would get no gradient
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.train()
    out = model(ids(), labels=torch.tensor([0, 1, 1]))
    out.loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == set(trainable)
    assert all(n.endswith(("lora_A", "lora_B")) or n.split(".")[0] in head for n in with_grad)
    torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2).step()
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in frozen.items())
    assert all(not torch.equal(params[n], v) for n, v in trainable.items())


# (f) merge, unmerge, disable, unload with adapters that change the output


@pytest.mark.parametrize("kind", ["toy", *HF])
def test_merge_unmerge_unload_round_trip(kind):
    model = tiny(kind)
    plain_keys = list(tiny(kind).state_dict())
    x = ids()
    base = logits(model, x)
    targets = ["Wq", "Wv"] if kind == "toy" else None
    inject_lora(model, targets, r=R, alpha=8, head=["classifier"])
    randomize_lora(model)
    unmerged = logits(model, x)
    assert (unmerged - base).abs().max() > 0.05  # the adapter changes something

    set_lora_disabled(model, True)
    torch.testing.assert_close(logits(model, x), base, atol=1e-6, rtol=0)
    set_lora_disabled(model, False)

    merge_lora(model)
    merged_w = {n: p.detach().clone() for n, p in model.named_parameters()}
    merge_lora(model)  # idempotent
    assert all(torch.equal(p, merged_w[n]) for n, p in model.named_parameters())
    torch.testing.assert_close(logits(model, x), unmerged, atol=1e-5, rtol=0)
    assert (logits(model, x) - base).abs().max() > 0.05
    set_lora_disabled(model, True)
    torch.testing.assert_close(logits(model, x), base, atol=1e-5, rtol=0)
    set_lora_disabled(model, False)

    unmerge_lora(model)
    unmerge_lora(model)
    torch.testing.assert_close(logits(model, x), unmerged, atol=1e-5, rtol=0)

    assert merge_and_unload(model) is model
    assert not lora_layers(model) and not any(isinstance(m, LoRALinear) for m in model.modules())
    assert list(model.state_dict()) == plain_keys
    torch.testing.assert_close(logits(model, x), unmerged, atol=1e-5, rtol=0)


# (g) errors that name the problem


def test_no_match_names_targets_and_closest_modules():
    with pytest.raises(LoraFtError, match=r"qeury.*closest module names:.*query"):
        match_targets(tiny("bert"), ["qeury"])


def test_match_that_is_not_linear():
    with pytest.raises(
        LoraFtError, match=r"bert\.encoder\.layer\.0\.attention, a BertAttention, not an nn\.Linear"
    ):
        inject_lora(tiny("bert"), ["attention"], r=R, alpha=8)


def test_unknown_architecture_without_targets_lists_linears():
    with pytest.raises(LoraFtError, match=r"set lora\.targets.*Wq \(x2\), Wk \(x2\).*classifier"):
        default_targets(tiny("toy"))
    with pytest.raises(LoraFtError, match="no default LoRA targets"):
        inject_lora(tiny("toy"), None, r=R, alpha=8)


def test_wrapping_twice_is_an_error():
    model = tiny("bert")
    inject_lora(model, ["query"], r=R, alpha=8)
    with pytest.raises(LoraFtError, match="already wrapped"):
        inject_lora(model, ["query"], r=R, alpha=8)
    inject_lora(model, ["value"], r=R, alpha=8)  # another layer is fine
    assert len(lora_layers(model)) == 2 * LAYERS
    assert all(layer.lora_A.requires_grad for layer in lora_layers(model).values())


def test_unknown_head():
    with pytest.raises(LoraFtError, match=r"head module 'clasifier'.*closest: classifier"):
        inject_lora(tiny("bert"), None, r=R, alpha=8, head=["clasifier"])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (["classifier"], "matched only head modules"),
        (["all-linear", "query"], "cannot be combined"),
        (["query("], "not a valid regex"),
    ],
)
def test_other_bad_specs(spec, message):
    with pytest.raises(LoraFtError, match=message):
        inject_lora(tiny("bert"), spec, r=R, alpha=8, head=["classifier"])


def test_target_inside_a_trained_head_is_refused():
    with pytest.raises(LoraFtError, match="inside head modules"):
        inject_lora(tiny("roberta"), ["out_proj"], r=R, alpha=8, head=["classifier"], exclude_head=False)


# (h) the other methods


def test_freeze_for_method():
    model = tiny("distilbert")
    total = count_parameters(model)[1]
    freeze_for_method(model, "head", ["pre_classifier", "classifier"])
    assert count_parameters(model) == (head_params_closed_form("distilbert"), total)
    freeze_for_method(model, "full", [])
    assert count_parameters(model) == (total, total)
    with pytest.raises(LoraFtError, match="none were named"):
        freeze_for_method(model, "head", [])
    with pytest.raises(LoraFtError, match="inject_lora"):
        freeze_for_method(model, "lora", [])
    with pytest.raises(LoraFtError, match="unknown training method"):
        freeze_for_method(model, "prefix", [])


# (i) the dry run


def test_targets_table_on_tiny_bert_leaves_the_model_alone():
    model = tiny("bert")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows, totals = targets_table(model, None, 8, ["classifier"])
    assert len(rows) == 6 * LAYERS + 2 == totals["linears"]  # six per layer, pooler, classifier
    wrapped = [row for row in rows if row["wrapped"]]
    assert len(wrapped) == totals["wrapped"] == 2 * LAYERS
    assert all(row["shape"] == (D, D) and row["lora_params"] == 8 * 2 * D for row in wrapped)
    assert all(row["lora_params"] == 0 for row in rows if not row["wrapped"])
    assert rows[-1] == {
        "name": "classifier", "shape": (LABELS, D), "out_features": LABELS, "in_features": D,
        "wrapped": False, "lora_params": 0,
    }  # fmt: skip
    report = inject_lora(copy.deepcopy(model), None, r=8, alpha=16, head=["classifier"])
    assert totals["trainable_params"] == report.trainable_params
    assert totals["total_params"] == report.total_params
    assert totals["trainable_percent"] == pytest.approx(100 * report.trainable_fraction)
    assert not lora_layers(model) and model.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_targets_table_on_a_meta_skeleton():
    with torch.device("meta"):
        model = tiny("distilbert")
    _, totals = targets_table(model, None, 4, default_head(model))
    assert totals["wrapped"] == 2 * LAYERS and totals["lora_params"] == 2 * LAYERS * 4 * 2 * D


# (j) the LoRA state dict


def wrapped_bert(seed: int) -> nn.Module:
    model = tiny("bert")
    torch.manual_seed(seed)
    inject_lora(model, None, r=R, alpha=8, head=["classifier"])
    return model


def test_lora_state_dict_round_trip():
    src = wrapped_bert(seed=10)
    randomize_lora(src)
    sd = lora_state_dict(src)
    names = [f"bert.encoder.layer.{i}.attention.self.{w}" for i in range(LAYERS) for w in ("query", "value")]
    assert set(sd) == {f"{n}.lora_{m}" for n in names for m in "AB"}
    assert sd[f"{names[0]}.lora_A"].shape == (R, D) and sd[f"{names[0]}.lora_B"].shape == (D, R)
    dst = wrapped_bert(seed=11)
    assert not torch.equal(lora_state_dict(dst)[f"{names[0]}.lora_A"], sd[f"{names[0]}.lora_A"])
    assert load_lora_state_dict(dst, sd) == ([], [])
    torch.testing.assert_close(logits(dst, ids()), logits(src, ids()), atol=0, rtol=0)


def test_load_lora_state_dict_errors():
    model = wrapped_bert(seed=0)
    sd = lora_state_dict(model)
    key = next(iter(sd))
    missing = {k: v for k, v in sd.items() if k != key}
    with pytest.raises(LoraFtError, match=f"missing keys: {key}"):
        load_lora_state_dict(model, missing)
    with pytest.raises(LoraFtError, match="unexpected keys: extra.lora_A"):
        load_lora_state_dict(model, {**sd, "extra.lora_A": torch.zeros(1)})
    with pytest.raises(LoraFtError, match=rf"shape mismatch: {key} \(2, 32\) vs \(4, 32\)"):
        load_lora_state_dict(model, {**sd, key: torch.zeros(2, D)})
    assert load_lora_state_dict(model, missing, strict=False) == ([key], [])
    with pytest.raises(LoraFtError, match="shape mismatch"):
        load_lora_state_dict(model, {key: torch.zeros(2, D)}, strict=False)
