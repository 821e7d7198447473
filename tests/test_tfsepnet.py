"""TF-SepNet: the published layer-by-layer complexity, its building blocks, training, FX PTQ and head replacement."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchinfo import summary

from bench.models import create_model, model_config
from bench.models.pretrained import HEAD_PREFIXES, checked_weights, load_pretrained
from bench.models.resnorm import ResidualNorm
from bench.models.tfsepnet import ChannelShuffle, TFSepNet
from bench.score.quantize import QuantizationError, convert_prepared, int8_size, observe_static

ONE_SECOND = 32_000
SHAPE = (1, 1, 512, 64)

# (counted modules, input C x F x T, params, MACs): the TF-SepNet-64 table at 1x1x512x64 (norms and pools count 0).
TABLE = [
    (("stem.0",), (1, 512, 64), 352, 2_359_360),
    (("stem.1",), (32, 256, 32), 1_408, 2_359_552),
    (("layers.norm1", "layers.block1"), (128, 128, 16), 10_816, 17_318_272),
    (("layers.block2", "layers.norm2", "layers.pool1"), (64, 128, 16), 2_496, 540_928),
    (("layers.block3",), (64, 64, 8), 11_616, 3_459_648),
    (("layers.block4", "layers.norm3", "layers.pool2"), (96, 64, 8), 5_280, 313_728),
    (("layers.block5",), (96, 32, 4), 21_632, 1_770_240),
    (("layers.block6", "layers.norm4", "layers.pool3"), (128, 32, 4), 9_088, 197_120),
    (("layers.block7",), (128, 16, 2), 34_720, 786_880),
    (("layers.block8",), (160, 16, 2), 13_920, 131_200),
    (("layers.block9", "layers.norm5"), (160, 16, 2), 13_920, 131_200),
    (("head",), (160, 16, 2), 1_610, 51_520),
]
TOTAL = (126_858, 29_419_648)


def count(net: nn.Module, shape: tuple) -> tuple[int, int]:
    s = summary(copy.deepcopy(net).float(), input_size=shape, verbose=0)
    return s.total_params, s.total_mult_adds


@pytest.fixture(scope="module")
def tf64():
    torch.manual_seed(0)
    return create_model("tfsepnet_64")


# --- complexity --------------------------------------------------------------------------------------------------

def test_total_complexity_and_input_shape(tf64):
    assert tf64.input_shape() == SHAPE
    assert tf64.frontend.n_mels == 512 and tf64.frontend.fmin == 0.0 and tf64.frontend.fmax == 16_000.0
    assert count(tf64.net, SHAPE) == TOTAL
    assert count(tf64.net, (1, 1, 512, 65))[1] == 30_740_608  # one frame more and it is over the 30 M MAC limit
    params = TOTAL[0]
    assert sum(p.numel() for p in tf64.net.parameters()) == params
    assert params * 4 > 128_000 >= params * 1  # fits the challenge's memory limit only as INT8


def test_layer_by_layer_complexity(tf64):
    """Each row of the table, counted by torchinfo on the input shape the layer really receives."""
    modules = dict(tf64.net.named_modules())
    seen: dict[str, tuple] = {}

    def record(name):
        def hook(module, args):
            seen[name] = tuple(args[0].shape)
        return hook

    hooks = [modules[name].register_forward_pre_hook(record(name)) for row in TABLE for name in row[0]]
    try:
        with torch.no_grad():
            tf64.net.eval()(torch.zeros(SHAPE))
    finally:
        for hook in hooks:
            hook.remove()
    totals = [0, 0]
    for names, chw, params, macs in TABLE:
        assert tuple(seen[names[0]][1:]) == chw, names
        row = [0, 0]
        for name in names:
            p, m = count(modules[name], (1, *seen[name][1:]))
            if not name.split(".")[-1].startswith("block") and name.startswith("layers"):
                assert (p, m) == (0, 0), name  # ResNorm (fixed lambda) and max pooling are free
            row[0] += p
            row[1] += m
        assert tuple(row) == (params, macs), names
        totals = [totals[0] + params, totals[1] + macs]
    assert tuple(totals) == TOTAL  # the rows cover the whole network


def test_layer_strings_and_options():
    net17 = TFSepNet()
    assert [n for n, m in net17.layers.named_children() if isinstance(m, nn.MaxPool2d)] == ["pool1", "pool2", "pool3"]
    assert len(net17.layers) == 17
    net16 = create_model("tfsepnet_64", depth=16).net
    assert len(net16.layers) == 16 and sum(isinstance(m, nn.MaxPool2d) for m in net16.layers) == 2
    assert count(net16, SHAPE) == (126_858, 32_024_128)  # the same weights, a 2x larger last stage
    assert set(model_config("tfsepnet_64")) >= {"n_classes", "base_channels", "depth", "n_mels", "dropout"}
    with pytest.raises(ValueError, match="depth"):
        TFSepNet(depth=15)
    with pytest.raises(ValueError, match="even"):
        TFSepNet(base_channels=22)  # 1.5 x 22 = 33 channels cannot be split into halves
    small = create_model("tfsepnet_smoke", base_channels=8, n_mels=64, n_classes=4, dropout=0.0)
    assert small.input_shape() == (1, 1, 64, 64)
    with torch.no_grad():
        assert small.eval()(torch.randn(2, ONE_SECOND)).shape == (2, 4)


# --- building blocks ---------------------------------------------------------------------------------------------

def test_fixed_resnorm_has_no_parameters_and_matches_the_formula():
    rn = ResidualNorm("frequency", 0.1, trainable=False)
    assert list(rn.parameters()) == [] and rn.state_dict() == {} and rn.lam == 0.1
    assert count(rn, (1, 8, 16, 12)) == (0, 0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 16, 12, generator=gen) * 3 + torch.arange(16.0).view(1, 1, 16, 1)
    mu = x.mean(dim=(1, 3), keepdim=True)
    var = x.var(dim=(1, 3), keepdim=True, unbiased=False)
    assert torch.allclose(rn(x), 0.1 * x + (x - mu) / torch.sqrt(var + 1e-5), atol=1e-5)
    assert isinstance(ResidualNorm().lam, nn.Parameter)  # the default stays trainable
    assert all(isinstance(m, ResidualNorm) and not m.trainable for n, m in TFSepNet().layers.named_children()
               if n.startswith("norm"))


def test_channel_shuffle_interleaves_the_halves():
    x = torch.arange(8.0).view(1, 8, 1, 1).expand(2, 8, 3, 5)
    y = ChannelShuffle()(x)
    assert y[0, :, 0, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    assert torch.equal(y[:, :, 2, 4], y[:, :, 0, 0]) and y.shape == x.shape


# --- training and loading --------------------------------------------------------------------------------------

def test_training_step_on_smoke():
    torch.manual_seed(0)
    model = create_model("tfsepnet_smoke").train()
    assert model.input_shape() == (1, 1, 128, 64)
    wave = torch.randn(4, ONE_SECOND)
    loss = nn.functional.cross_entropy(model(wave), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["net.stem.0.0.weight"].abs().sum() > 0 and grads["net.head.conv.bias"].abs().sum() > 0
    before = model.net.head.conv.weight.detach().clone()
    with torch.no_grad():  # a plain SGD step (torch.optim's first use imports torch._dynamo: seconds)
        for p in model.parameters():
            p -= 0.05 * p.grad
    assert not torch.equal(before, model.net.head.conv.weight)


def test_pretrained_weights_drop_only_the_head():
    pre = create_model("tfsepnet_smoke", n_classes=36)
    model = create_model("tfsepnet_smoke", n_classes=10)
    dropped = load_pretrained(model, pre.state_dict())
    assert dropped == ["net.head.conv.weight", "net.head.conv.bias"]
    assert all(k.startswith(HEAD_PREFIXES) for k in dropped)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in pre.state_dict().items() if k not in dropped)
    assert state["net.head.conv.weight"].shape == (10, 40, 1, 1)  # 2.5 x base 16


def test_a_local_pretrained_checkpoint_is_checked_key_by_key(tmp_path):
    """adaptf_sepnet's `pretrain.checkpoint`: a bare state dict or a `pretrain` stage artifact; the wrong
    architecture or a missing file is a one-line error naming the file."""
    pre = create_model("tfsepnet_smoke", n_classes=36)
    torch.save(pre.state_dict(), tmp_path / "bare.pt")
    torch.save({"weights": pre.state_dict()}, tmp_path / "artifact.pt")
    for name in ("bare.pt", "artifact.pt"):
        model = create_model("tfsepnet_smoke")
        checked_weights(model, tmp_path / name)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in pre.state_dict().items() if "head" not in k)
    with pytest.raises(ValueError, match=r"bare.pt: .*shape .* \(expected the state dict of tfsepnet_smoke\)"):
        checked_weights(create_model("tfsepnet_smoke", base_channels=8), tmp_path / "bare.pt")
    with pytest.raises(FileNotFoundError, match="never downloads"):
        checked_weights(create_model("tfsepnet_smoke"), tmp_path / "missing.pt")


# --- INT8 --------------------------------------------------------------------------------------------------------

def test_fx_static_ptq(tf64):
    torch.manual_seed(1)
    net = tf64.net.eval()
    with torch.no_grad():
        feats = tf64.eval().features(0.1 * torch.randn(4, ONE_SECOND))
    converted = convert_prepared(observe_static(net, [feats], feats[:1]))
    # the whole graph runs in int8: one quantize at the input, one dequantize at the output
    assert sum(n.op == "call_method" and n.target == "dequantize" for n in converted.graph.nodes) == 1
    with torch.no_grad():
        ref, out = net(feats), converted(feats)
    assert out.shape == ref.shape == (4, 10) and torch.isfinite(out).all()
    assert (out - ref).norm() <= 0.15 * ref.norm()
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.8
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    size = int8_size(converted)
    assert size.n_quantized_tensors == len(convs) == 43
    # 1 B per conv weight; BN (folded) and the classifier bias are stored as float32 biases
    assert size.quantized_values == sum(c.weight.numel() for c in convs) == 121_408
    assert size.quantized_values <= 128_000


def test_a_ptq_recipe_keeps_resnorm_in_float_and_changes_the_observer():
    """``float_modules``: ResNorm runs in float between a dequantize and a quantize (the authors' INC setup kept it
    out of int8); ``activation_observer``/``reduce_range`` change the activation ranges; bad recipes fail clearly."""
    model = create_model("tfsepnet_smoke").eval()
    feats = model.features(0.1 * torch.randn(8, ONE_SECOND, generator=torch.Generator().manual_seed(3)))
    default = convert_prepared(observe_static(model.net, [feats], feats[:1]))
    floats = convert_prepared(observe_static(model.net, [feats], feats[:1], {"float_modules": ["ResidualNorm"]}))
    assert "quantized.instance_norm" in default.code and "quantized.instance_norm" not in floats.code
    norms = [n for n, m in model.net.named_modules() if isinstance(m, ResidualNorm)]
    assert norms and all(isinstance(floats.get_submodule(n), ResidualNorm) for n in norms)
    assert int8_size(floats).n_quantized_tensors == int8_size(default).n_quantized_tensors  # every conv still int8
    scales = {}
    for name, recipe in [("histogram", {}), ("minmax", {"activation_observer": "minmax", "reduce_range": False})]:
        q = convert_prepared(observe_static(model.net, [feats], feats[:1], recipe))
        scales[name] = float(q.get_buffer(next(b for b, _ in q.named_buffers() if b.endswith("input_scale_0"))))
    assert scales["minmax"] != scales["histogram"]
    with pytest.raises(QuantizationError, match="unknown keys observer"):
        observe_static(model.net, [feats], feats[:1], {"observer": "minmax"})
    with pytest.raises(QuantizationError, match="float_modules: no LayerNorm module in TFSepNet"):
        observe_static(model.net, [feats], feats[:1], {"float_modules": ["LayerNorm"]})


def test_a_ptq_recipe_names_the_engine_that_packs_the_weights_and_the_record_rebuilds_with_it(smoke_store):
    """TF-SepNet's INT8 runs 2x faster on fbgemm than on the default oneDNN: the recipe's ``engine`` packs the
    weights, is kept in the deployment record and rebuilds the same model; an engine PyTorch lacks is a clear error."""
    from bench import submission
    from bench.data.manifest import load_manifest
    from bench.score.scorer import ScoreOptions, score_submission
    from bench.submission import UNKNOWN, Deployment, ModelSubmission

    torch.manual_seed(0)
    model = create_model("tfsepnet_smoke").eval()
    feats = model.features(0.1 * torch.randn(8, ONE_SECOND, generator=torch.Generator().manual_seed(3)))
    deployed = Deployment.ptq(model, [feats], recipe={"engine": "fbgemm"})
    assert torch.backends.quantized.engine == "fbgemm" and deployed.info["quantization"]["engine"] == "fbgemm"
    torch.backends.quantized.engine = "onednn"  # packed weights keep their kernels whatever is selected later
    submission._INT8_NETS.clear()
    rebuilt = Deployment(deployed.arch, deployed.arch_config, deployed.form, deployed.state, deployed.info)
    with torch.inference_mode():
        assert torch.equal(deployed.net(feats), rebuilt.net(feats))
    with pytest.raises(QuantizationError, match="engine 'nope' is not available here"):
        Deployment.ptq(model, [feats], recipe={"engine": "nope"})

    # a system's float ablation of its own INT8 deployment is not quantized a second time by the scorer
    manifest = load_manifest(smoke_store.info["manifest"])
    floats = ModelSubmission("float-twin", manifest.classes, {UNKNOWN: Deployment.float(model)})
    floats.int8_row = "the-int8-row"
    result = score_submission(floats, smoke_store, manifest, "test",
                              options=ScoreOptions(int8=True, energy=False, n_boot=10))
    assert result.row["int8_error"] == "not quantized again: its own INT8 deployment is row the-int8-row"
    assert result.row.get("int8_macro_acc") is None
    # the score's phases, in the order they ran, inside its wall time; nothing was quantized, so no INT8 phase
    assert list(result.phase_s) == ["test prediction", "metrics and intervals", "official complexity count"]
    assert 0 < sum(result.phase_s.values()) <= result.row["wall_s_score"]
