"""TorchScript taps of models whose classifier does not run in the top-level forward: a stand-in for timm's ViT
(``forward`` calls ``forward_features`` and ``forward_head``, and the head runs in a branch on ``pre_logits``) and a
model whose head is a nested sub-module (``classifier.fc``). Each is scripted and saved, then tapped by default and
at named sub-modules at any depth, and compared with eager hooks on the unscripted model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from nc_probe.analysis.inspection import inspect_checkpoint
from nc_probe.analysis.pipeline import analyze_checkpoint
from nc_probe.core.errors import InputError
from nc_probe.taps import ScriptTap, make_tap

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        x = x + x.mean(1, keepdim=True)  # mixes the tokens, as attention would
        return x + self.mlp(self.norm(x))


class TinyViT(nn.Module):
    """Shaped like timm's VisionTransformer: patch embedding, blocks, forward_features / forward_head, the blocks
    called in branches that TorchScript keeps (on an argument with a default, and on an attribute)."""

    def __init__(self, num_classes=5, dim=16, img=16, patch=4):
        super().__init__()
        self.grad_checkpointing = False
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, (img // patch) ** 2 + 1, dim))
        self.blocks = nn.Sequential(Block(dim), Block(dim))
        self.norm = nn.LayerNorm(dim)
        self.head_drop = nn.Dropout(0.1)
        self.head = nn.Linear(dim, num_classes)

    def forward_features(self, x, attn_mask: torch.Tensor | None = None):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        if attn_mask is not None:  # timm calls the blocks one by one then, with the mask
            for block in self.blocks:
                x = block(x) * attn_mask
        elif self.grad_checkpointing and not torch.jit.is_scripting():
            x = self.blocks(x)  # timm: checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)

    def forward_head(self, x, pre_logits: bool = False):
        x = self.head_drop(x[:, 0])
        return x if pre_logits else self.head(x)

    def forward(self, x, attn_mask: torch.Tensor | None = None):
        return self.forward_head(self.forward_features(x, attn_mask))


class Classifier(nn.Module):
    def __init__(self, dim, num_classes):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x):
        return self.fc(self.pool(x).flatten(1))


class NestedHead(nn.Module):
    """The classifier is ``classifier.fc``, behind a ReLU(inplace=True) that overwrites the body's conv output."""

    def __init__(self, num_classes=5):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True))
        self.classifier = Classifier(8, num_classes)

    def forward(self, x):
        return self.classifier(self.body(x))


class Branchy(nn.Module):
    """Linear layers in branches on attributes, which TorchScript keeps as run-time branches: ``pre`` before the
    classifier ``fc``, and ``extra`` after it."""

    def __init__(self):
        super().__init__()
        self.use_pre = True
        self.use_extra = False
        self.pre = nn.Linear(4, 4)
        self.fc = nn.Linear(4, 3)
        self.extra = nn.Linear(3, 3)

    def forward(self, x):
        if self.use_pre:
            x = self.pre(x)
        x = self.fc(x)
        if self.use_extra:
            x = self.extra(x)
        return x


class Linear(nn.Module):
    """What traces of nn.Linear recorded before PyTorch had aten::linear: addmm for 2-D inputs, else matmul + add."""

    __constants__ = ("use_addmm",)  # a constant, so TorchScript compiles one of the two forms only

    def __init__(self, d, c, use_addmm):
        super().__init__()
        self.use_addmm = use_addmm
        self.weight = nn.Parameter(torch.randn(c, d))
        self.bias = nn.Parameter(torch.randn(c))

    def forward(self, x):
        if self.use_addmm:
            return torch.addmm(self.bias, x, self.weight.t())
        return torch.matmul(x, self.weight.t()) + self.bias


HEADS = {TinyViT: "head", NestedHead: "classifier.fc"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _saved(model, path, how="script", x=None):
    scripted = torch.jit.script(model) if how == "script" else torch.jit.trace(model, x)
    torch.jit.save(scripted, str(path))
    return torch.jit.load(str(path))


def _head_input(model, head, x):
    seen = []
    handle = model.get_submodule(head).register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        logits = model(x)
    handle.remove()
    return seen[-1], logits


@pytest.mark.parametrize("how", ["script", "trace"])
@pytest.mark.parametrize("cls", [TinyViT, NestedHead])
def test_default_tap_is_the_head_input(cls, how, tmp_path):
    torch.manual_seed(0)
    model = cls().eval()
    x = torch.randn(6, 3, 16, 16)
    head = HEADS[cls]
    tap = make_tap(_saved(model, tmp_path / "m.pt", how, x))
    assert isinstance(tap, ScriptTap)
    assert tap.layer == f"{head} (input)" and tap.tap_module == head and tap.num_outputs == 5
    expected, _ = _head_input(model, head, x)
    with torch.no_grad():
        feats, logits = tap(x)
    torch.testing.assert_close(feats, expected)
    assert logits is None
    fc = model.get_submodule(head)
    np.testing.assert_allclose(tap.W, fc.weight.detach().double().numpy())
    np.testing.assert_allclose(tap.b, fc.bias.detach().double().numpy())


def test_layer_taps_at_any_depth(tmp_path):
    torch.manual_seed(0)
    vit = TinyViT().eval()
    x = torch.randn(4, 3, 16, 16)
    scripted = _saved(vit, tmp_path / "vit.pt")
    block_out = []
    handle = vit.blocks[1].register_forward_hook(lambda m, args, out: block_out.append(out))
    with torch.no_grad():
        logits = vit(x)
    handle.remove()
    with torch.no_grad():
        torch.testing.assert_close(make_tap(scripted, layer="head")(x)[0], logits)
        torch.testing.assert_close(make_tap(scripted, layer="blocks.1")(x)[0], block_out[0].flatten(1))
        tokens = _tokens(vit, x)
        gelu = vit.blocks[0].mlp[:2](vit.blocks[0].norm(tokens + tokens.mean(1, keepdim=True)))
        torch.testing.assert_close(make_tap(scripted, layer="blocks.0.mlp.1")(x)[0], gelu.flatten(1))
        # Dropout in eval returns its input: a module with no node of its own is still tapped.
        torch.testing.assert_close(make_tap(scripted, layer="head_drop")(x)[0], _head_input(vit, "head", x)[0])

    nested = NestedHead().eval()
    scripted = _saved(nested, tmp_path / "nested.pt")
    with torch.no_grad():
        torch.testing.assert_close(make_tap(scripted, layer="classifier.fc")(x)[0], nested(x))
        torch.testing.assert_close(make_tap(scripted, layer="classifier")(x)[0], nested(x))
        # The conv output that ReLU(inplace=True) overwrites afterwards: the tap keeps the conv's values.
        conv_out = nested.body[0](x)
        assert bool((conv_out < 0).any())
        torch.testing.assert_close(make_tap(scripted, layer="body.0")(x)[0], conv_out.flatten(1))


def _tokens(vit, x):
    """The input of the first block."""
    t = vit.patch_embed(x).flatten(2).transpose(1, 2)
    return torch.cat([vit.cls_token.expand(len(x), -1, -1), t], 1) + vit.pos_embed


def test_wrong_layer_lists_tappable_names(tmp_path):
    vit = _saved(TinyViT().eval(), tmp_path / "vit.pt")
    with pytest.raises(InputError, match=r"tappable: head\)") as err:
        make_tap(vit, layer="heads")
    assert "\n" not in str(err.value)
    # Nothing close: the top-level modules come first, in the order they run.
    with pytest.raises(InputError, match=r"tappable: patch_embed, blocks, norm, head_drop, head, blocks\.0, \.\.\.\)"):
        make_tap(vit, layer="classifier.fc")
    with pytest.raises(InputError, match=r"'blocks\.1\.weight' is not a module .*tappable: blocks\.1"):
        make_tap(vit, layer="blocks.1.weight")
    nested = _saved(NestedHead().eval(), tmp_path / "nested.pt")
    with pytest.raises(InputError, match=r"tappable: classifier\.fc, classifier"):
        make_tap(nested, layer="classifier.fcc")


def test_branches_on_attributes(tmp_path):
    torch.manual_seed(0)
    model = Branchy().eval()
    x = torch.randn(5, 4)
    scripted = _saved(model, tmp_path / "branchy.pt")
    with torch.no_grad():
        torch.testing.assert_close(make_tap(scripted, layer="pre")(x)[0], model.pre(x))
        tap = make_tap(scripted)
        torch.testing.assert_close(tap(x)[0], model.pre(x))
        assert tap.layer == "fc (input)"
        # As with forward hooks, the first batch decides: extra runs last when it runs.
        scripted.use_extra = True
        tap = make_tap(scripted)
        torch.testing.assert_close(tap(x)[0], model.fc(model.pre(x)))
        assert tap.layer == "extra (input)" and tap.W.shape == (3, 3)
        np.testing.assert_allclose(tap.b, model.extra.bias.double().numpy())
        scripted.use_pre = False
        tap = make_tap(scripted, layer="pre")
        with pytest.raises(InputError, match="did not run"):
            tap(x)


def test_module_called_in_several_branches(tmp_path):
    """Tapped where it ran: in the loop over the blocks when a mask is given, else through self.blocks."""
    torch.manual_seed(0)
    vit = TinyViT().eval()
    x = torch.randn(4, 3, 16, 16)
    mask = torch.rand(1, 17, 1)
    scripted = _saved(vit, tmp_path / "vit.pt")
    for args in ((x,), (x, mask)):
        block_out: list = []
        handle = vit.blocks[1].register_forward_hook(lambda m, a, out, seen=block_out: seen.append(out))
        with torch.no_grad():
            logits = vit(*args)
        handle.remove()
        with torch.no_grad():
            torch.testing.assert_close(make_tap(scripted, layer="blocks.1")(args)[0], block_out[-1].flatten(1))
            torch.testing.assert_close(make_tap(scripted, layer="head")(args)[0], logits)


@pytest.mark.parametrize("use_addmm", [True, False])
def test_linear_of_old_traces(use_addmm, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), Linear(4, 3, use_addmm)).eval()
    x = torch.randn(5, 6)
    tap = make_tap(_saved(model, tmp_path / "old.pt"))
    assert tap.layer == "2 (input)"
    with torch.no_grad():
        torch.testing.assert_close(tap(x)[0], model[:2](x))
    np.testing.assert_allclose(tap.W, model[2].weight.detach().double().numpy())
    np.testing.assert_allclose(tap.b, model[2].bias.detach().double().numpy())


def test_inspect_marks_the_nested_head(tmp_path):
    for cls in (TinyViT, NestedHead):
        _saved(cls().eval(), tmp_path / "m.pt")
        rows = inspect_checkpoint(tmp_path / "m.pt", input_shape=(3, 16, 16), trust_checkpoint=True)
        assert [r["name"] for r in rows if r["default_tap"]] == [HEADS[cls]]
        assert next(r for r in rows if r["name"] == "")["output_shape"] == [5]


def test_analyze_checkpoint(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "vit.pt"
    _saved(TinyViT().eval(), path)
    x = torch.randn(40, 3, 16, 16)
    y = torch.arange(40, dtype=torch.int64) % 5
    report = analyze_checkpoint(path, data=(x, y), device="cpu", trust_checkpoint=True)  # TorchScript is code
    assert report.inputs["layer"] == "head (input)"
    report = analyze_checkpoint(path, data=(x, y), device="cpu", layer="blocks.1", trust_checkpoint=True)
    assert report.inputs["layer"] == "blocks.1"
