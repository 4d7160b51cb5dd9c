"""Hugging Face save_pretrained folders as checkpoints (transformers is optional: skipped without it).

Token-level collapse of causal LMs is checked against an independent computation on the features transformers
returns (the last hidden state, after the final norm, at every position with a next token); image and sequence
classifiers against a hook on their classifier; and every refusal a folder can earn (remote code, pickled weights,
a class outside transformers, a config larger than its weights) runs nothing and is one line.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import nc_probe
from nc_probe.cli.app import app
from nc_probe.core.errors import InputError

transformers = pytest.importorskip("transformers")
runner = CliRunner()
COMPARED = ("nc1", "nc1_cdnv", "nc2_etf_M", "nc2_etf_W", "nc3", "nc3_etf", "nc4", "acc_model", "acc_ncc",
            "coding_rate", "rate_reduction")


def _quiet_save(model, folder):
    transformers.utils.logging.disable_progress_bar()
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "generation_config.json").unlink(missing_ok=True)
    return folder


@pytest.fixture(scope="module")
def token_ids(tmp_path_factory):
    """40 sequences of 24 token ids in 0..299; five of them padded after position 18."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 300, (40, 24), generator=g)
    mask = torch.ones_like(ids)
    mask[5:10, 18:] = 0
    path = tmp_path_factory.mktemp("data") / "ids.npz"
    np.savez(path, input_ids=ids.numpy(), attention_mask=mask.numpy())
    return path, ids, mask


@pytest.fixture(scope="module", params=["gpt2", "llama-untied"])
def causal_lm(request, tmp_path_factory):
    torch.manual_seed(0)
    if request.param == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=300, n_embd=32, n_layer=2, n_head=2, n_positions=64,
                                      bos_token_id=0, eos_token_id=0)
        model = transformers.GPT2LMHeadModel(cfg)
    else:
        cfg = transformers.LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                                       tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, pad_token_id=0)
        model = transformers.LlamaForCausalLM(cfg)
    return _quiet_save(model.eval(), tmp_path_factory.mktemp(request.param) / "model")


def _independent_token_report(folder, ids, mask):
    """Features transformers returns (the last hidden state) at the positions with a next token, labels the next
    tokens, W the lm_head weight: analysed directly."""
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    valid = torch.zeros_like(mask, dtype=torch.bool)
    valid[:, :-1] = (mask[:, :-1] == 1) & (mask[:, 1:] == 1)
    H = out.hidden_states[-1][valid].double().numpy()
    y = ids[:, 1:][valid[:, :-1]].numpy()
    W = model.get_output_embeddings().weight.detach().double().numpy()
    predicted = out.logits[valid].argmax(-1).numpy()
    return nc_probe.analyze_features(H, y, W, None), predicted, y


def test_token_level_collapse_equals_the_features_transformers_returns(causal_lm, token_ids):
    path, ids, mask = token_ids
    got = nc_probe.analyze_checkpoint(causal_lm, data=str(path), device="cpu")
    want, predicted, y = _independent_token_report(causal_lm, ids, mask)
    assert got.inputs["num_samples"] == int(((mask[:, :-1] == 1) & (mask[:, 1:] == 1)).sum()) == len(y)
    assert got.inputs["format"] == "huggingface" and got.inputs["num_classes"] == want.inputs["num_classes"]
    for key in COMPARED:
        assert got.metrics[key] == pytest.approx(want.metrics[key], rel=1e-5, abs=1e-9), key
    assert got.metrics["acc_model"] == pytest.approx(float(np.mean(predicted == y)), abs=1e-12)


def test_padding_is_not_a_sample(causal_lm, token_ids, tmp_path):
    """Padded positions (and the last real one of a sequence) are no samples: changing the ids under the mask's
    zeros changes nothing."""
    path, ids, mask = token_ids
    other = ids.clone()
    other[mask == 0] = 7
    moved = tmp_path / "other.npz"
    np.savez(moved, input_ids=other.numpy(), attention_mask=mask.numpy())
    a = nc_probe.analyze_checkpoint(causal_lm, data=str(path), device="cpu")
    b = nc_probe.analyze_checkpoint(causal_lm, data=str(moved), device="cpu")
    assert a.inputs["num_samples"] == b.inputs["num_samples"]
    for key in ("nc1", "nc3", "acc_model"):
        assert b.metrics[key] == pytest.approx(a.metrics[key], rel=1e-9), key


def test_batch_size_does_not_change_the_report(causal_lm, token_ids):
    path, _, _ = token_ids
    a = nc_probe.analyze_checkpoint(causal_lm, data=str(path), device="cpu", batch_size=3)
    b = nc_probe.analyze_checkpoint(causal_lm, data=str(path), device="cpu", batch_size=40)
    for key in COMPARED:
        assert b.metrics[key] == pytest.approx(a.metrics[key], rel=1e-9, abs=1e-12), key


def test_layers_of_a_causal_lm_are_token_level(causal_lm, token_ids):
    path, _, mask = token_ids
    r = nc_probe.analyze_layers(causal_lm, data=str(path), device="cpu")
    assert len(r.layers) == 3  # two blocks and the lm_head input
    rows = int(((mask[:, :-1] == 1) & (mask[:, 1:] == 1)).sum())
    assert r.inputs["num_samples"] == rows
    assert {layer["pool"] for layer in r.layers} <= {"token", "none"}
    with pytest.raises(InputError, match="token by token"):
        nc_probe.analyze_layers(causal_lm, data=str(path), device="cpu", pool="mean")


# -------------------------------------------------------------------------------------------- classifiers
@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=64, num_labels=4,
                                 id2label={i: f"c{i}" for i in range(4)}, label2id={f"c{i}": i for i in range(4)})
    folder = _quiet_save(transformers.ViTForImageClassification(cfg).eval(), tmp_path_factory.mktemp("vit") / "m")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 3, 16, 16)).astype(np.float32)
    y = np.arange(48) % 4
    data = folder.parent / "pixels.npz"
    np.savez(data, x=x, y=y)
    return folder, data, x, y


def _head_input(model, head, **inputs):
    taken = []
    handle = head.register_forward_pre_hook(lambda m, a: taken.append(a[0].detach()))
    with torch.no_grad():
        logits = model(**inputs).logits
    handle.remove()
    return taken[0].double().numpy(), logits


def test_image_classifier_taps_the_classifier_input(vit):
    folder, data, x, y = vit
    got = nc_probe.analyze_checkpoint(folder, data=str(data), device="cpu")
    model = transformers.ViTForImageClassification.from_pretrained(folder).eval()
    H, _ = _head_input(model, model.classifier, pixel_values=torch.from_numpy(x))
    want = nc_probe.analyze_features(H, y, model.classifier.weight.detach().double().numpy(),
                                     model.classifier.bias.detach().double().numpy())
    for key in COMPARED:
        assert got.metrics[key] == pytest.approx(want.metrics[key], rel=1e-5, abs=1e-9), key
    assert got.inputs["class_names"] == ["c0", "c1", "c2", "c3"]


def test_vit_layers_take_the_class_token(vit):
    folder, data, _, _ = vit
    r = nc_probe.analyze_layers(folder, data=str(data), device="cpu", layers="@blocks")
    assert {layer["pool"] for layer in r.layers} == {"cls"}


def test_sequence_classifier_reads_the_pooled_features(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, num_labels=3)
    folder = _quiet_save(transformers.BertForSequenceClassification(cfg).eval(), tmp_path / "bert")
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1, 100, (30, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[::3, 9:] = 0
    labels = torch.arange(30) % 3
    data = tmp_path / "text.npz"
    np.savez(data, input_ids=ids.numpy(), attention_mask=mask.numpy(), labels=labels.numpy())
    got = nc_probe.analyze_checkpoint(folder, data=str(data), device="cpu")
    model = transformers.BertForSequenceClassification.from_pretrained(folder).eval()
    H, _ = _head_input(model, model.classifier, input_ids=ids, attention_mask=mask)
    want = nc_probe.analyze_features(H, labels.numpy(), model.classifier.weight.detach().double().numpy(),
                                     model.classifier.bias.detach().double().numpy())
    assert got.inputs["num_samples"] == 30
    for key in COMPARED:
        assert got.metrics[key] == pytest.approx(want.metrics[key], rel=1e-5, abs=1e-9), key


# ------------------------------------------------------------------------------------------------ text data
@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory):
    tokenizers = pytest.importorskip("tokenizers")
    text = "the cat sat on the mat. the dog sat on the log. " * 40
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.train_from_iterator([text], tokenizers.trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=tok.get_vocab_size(), n_embd=16, n_layer=1, n_head=2, n_positions=32,
                                  bos_token_id=0, eos_token_id=0)
    folder = _quiet_save(transformers.GPT2LMHeadModel(cfg).eval(), tmp_path_factory.mktemp("tok") / "lm")
    tok.save(str(folder / "tokenizer.json"))
    (folder.parent / "text.txt").write_text(text)
    lines = [json.dumps({"text": "the cat sat on the mat"}), "", json.dumps({"text": "the dog sat on the log"})]
    (folder.parent / "text.jsonl").write_text("\n".join(lines) + "\n")
    return folder, tok, text


def test_text_is_tokenized_by_the_folders_tokenizer_into_windows(tokenizer_folder):
    folder, tok, text = tokenizer_folder
    ids = tok.encode(text).ids
    r = nc_probe.analyze_checkpoint(folder, data=str(folder.parent / "text.txt"), device="cpu", seq_len=16)
    windows = [ids[i:i + 16] for i in range(0, len(ids), 16)]
    assert r.inputs["num_samples"] == sum(len(w) - 1 for w in windows if len(w) >= 2)
    j = nc_probe.analyze_checkpoint(folder, data=str(folder.parent / "text.jsonl"), device="cpu")
    assert j.inputs["num_samples"] == 5 + 5  # two lines of six words, each a window of 6 tokens


# ------------------------------------------------------------------------------------------------ the CLI
def test_every_command_takes_a_folder(causal_lm, token_ids, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the gate reads no pyproject.toml's rules
    path, _, _ = token_ids
    data = ["--data", str(path)]
    for args in (["analyze", str(causal_lm), *data, "-q", "--json", str(tmp_path / "r.json")],
                 ["inspect", str(causal_lm)],
                 ["layers", str(causal_lm), *data, "-q"],
                 ["compare", f"a={causal_lm}", f"b={causal_lm}", *data, "-q"],
                 ["gate", str(causal_lm), *data, "-r", "nc1<=1000", "-q"],
                 ["trajectory", str(causal_lm), *data, "-q"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output)
    assert nc_probe.Report.load(tmp_path / "r.json").inputs["sha256"]


def test_a_trainers_checkpoint_folders_are_a_series_in_step_order(causal_lm, token_ids, tmp_path):
    import shutil

    path, _, _ = token_ids
    run = tmp_path / "run"
    for step in (1000, 500, 200):  # checkpoint-1000 sorts before checkpoint-200 by name
        shutil.copytree(causal_lm, run / f"checkpoint-{step}")
    traj = nc_probe.run_trajectory([str(run)], data=str(path), device="cpu")
    assert [p.label for p in traj.points] == ["checkpoint-200", "checkpoint-500", "checkpoint-1000"]
    assert [p.epoch for p in traj.points] == [200, 500, 1000]


# ---------------------------------------------------------------------------------------------- refusals
def _refused(result, *words):
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for w in words:
        assert w in result.output, result.output


def _edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def test_hostile_folders_run_nothing(causal_lm, token_ids, tmp_path):
    import shutil

    path, _, _ = token_ids
    marker = tmp_path / "ran"

    def variant(name, **changes):
        folder = tmp_path / name
        shutil.copytree(causal_lm, folder)
        _edit_config(folder, **changes)
        return folder

    remote = variant("remote", auto_map={"AutoModelForCausalLM": "evil.Model"})
    (remote / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    _refused(runner.invoke(app, ["analyze", str(remote), "--data", str(path)]), "auto_map", "--trust-checkpoint")
    _refused(runner.invoke(app, ["inspect", str(remote)]), "auto_map")
    _refused(runner.invoke(app, ["analyze", str(variant("foreign", architectures=["os.system"])), "--data",
                                 str(path)]), "os.system")
    _refused(runner.invoke(app, ["analyze", str(variant("task", architectures=["GPT2Model"])), "--data",
                                 str(path)]), "GPT2Model")
    huge = variant("huge", vocab_size=50_000_000)
    _refused(runner.invoke(app, ["analyze", str(huge), "--data", str(path)]), "parameters")
    pickled = tmp_path / "pickled"
    shutil.copytree(causal_lm, pickled)
    model = transformers.AutoModelForCausalLM.from_pretrained(causal_lm)
    (pickled / "model.safetensors").unlink()
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    _refused(runner.invoke(app, ["analyze", str(pickled), "--data", str(path)]), "pytorch_model.bin")
    assert not marker.exists()


def test_token_data_errors_are_one_line(causal_lm, tmp_path):
    bad = tmp_path / "big.npz"
    np.savez(bad, input_ids=np.full((2, 5), 999))
    _refused(runner.invoke(app, ["analyze", str(causal_lm), "--data", str(bad)]), "vocabulary")
    floats = tmp_path / "floats.npz"
    np.savez(floats, input_ids=np.zeros((2, 5)))
    _refused(runner.invoke(app, ["analyze", str(causal_lm), "--data", str(floats)]), "input_ids")
    text = tmp_path / "t.txt"
    text.write_text("no tokenizer here")
    _refused(runner.invoke(app, ["analyze", str(causal_lm), "--data", str(text)]), "tokenizer.json")


# ------------------------------------------------------------------------------------------- the LM samples
def test_the_language_model_samples_collapse_with_training():
    """sample:lm_early (1 epoch) and sample:lm (40 epochs) on their training tokens: token-level collapse advances
    (measured: nc1 5.67 -> 1.09, nc3 1.56 -> 0.55, nc4 0.99 -> 0.66, accuracy 0.06 -> 0.50)."""
    early = nc_probe.analyze_checkpoint("sample:lm_early", device="cpu", limit=300)
    late = nc_probe.analyze_checkpoint("sample:lm", device="cpu", limit=300)
    assert early.inputs["num_samples"] == late.inputs["num_samples"] == 300 * 127
    e, m = early.metrics, late.metrics
    assert m["nc1"] < early.metrics["nc1"] / 2 and m["nc3"] < e["nc3"] and m["nc4"] < e["nc4"]
    assert m["acc_model"] > e["acc_model"] + 0.2 and m["acc_ncc"] > e["acc_ncc"]
    assert late.inputs["format"] == "huggingface" and late.inputs["data"].endswith("lm_text.npz")
