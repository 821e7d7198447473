"""Architectures: published complexity figures, PaSST checkpoint layout, Residual Normalization, FX QAT, the memory
layout each network trains in."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from torch.ao.quantization import get_default_qat_qconfig_mapping
from torch.ao.quantization.quantize_fx import convert_fx, prepare_qat_fx
from torch.utils.flop_counter import FlopCounterMode
from torchinfo import summary

from bench.models import create_model, list_models
from bench.models.base import declared_memory_format
from bench.models.frontends import CpMel, TorchaudioLogMel, preemphasis
from bench.models.passt import load_passt_checkpoint
from bench.models.pretrained import HEAD_PREFIXES, load_pretrained
from bench.models.resnorm import ResidualNorm
from bench.train.task import ClassifierTask, OptimConfig

ONE_SECOND = 32_000
PAPER_DSF = {  # DS-FlexiNet Table II: params, MACs
    "dsflexinet_sm1": (13_760, 3_880_000),
    "dsflexinet_sm2": (30_690, 8_270_000),
    "dsflexinet_sm3": (54_980, 14_340_000),
    "dsflexinet_sm4": (126_120, 23_030_000),
}
STUDENTS = [*PAPER_DSF, "cpmobile_baseline", "cpresnet_128k"]


def count(net: torch.nn.Module, shape: tuple) -> tuple[int, int]:
    s = summary(copy.deepcopy(net).float(), input_size=shape, verbose=0)
    return s.total_params, s.total_mult_adds


# --- front-end ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, shape", [
    (dict(), (1, 1, 256, 64)),
    (dict(hop_length=750), (1, 1, 256, 43)),
    (dict(n_mels=128, n_fft=1024, win_length=800, hop_length=320), (1, 1, 128, 100)),
])
def test_cpmel_shapes(kwargs, shape):
    assert tuple(CpMel(**kwargs).eval()(torch.randn(1, ONE_SECOND)).shape) == shape


@pytest.mark.parametrize("batch", [1, 32])
def test_preemphasis_is_the_fir_bit_for_bit(batch):
    """The slice form must equal the recipe's conv1d with [-0.97, 1] exactly: cached teachers depend on it."""
    wave = 0.1 * torch.randn(batch, ONE_SECOND, generator=torch.Generator().manual_seed(batch))
    fir = torch.nn.functional.conv1d(wave.unsqueeze(1), torch.tensor([[[-0.97, 1.0]]])).squeeze(1)
    assert torch.equal(preemphasis(wave), fir)


def fully_masked(x: torch.Tensor) -> bool:
    """Whether a whole frequency row or time column holds the mask value (log 0 -> (0 + 4.5) / 5 = 0.9)."""
    hit = torch.isclose(x, torch.tensor(0.9))
    return bool(hit.all(dim=3).any() or hit.all(dim=2).any())


def test_baseline_frontend_is_torchaudios_mel_spectrogram_up_to_rounding():
    frontend = TorchaudioLogMel(freqm=48).eval()
    wave = 0.1 * torch.randn(3, ONE_SECOND, generator=torch.Generator().manual_seed(0))
    expected = torch.log(frontend.mel(wave) + 1e-5).unsqueeze(1)
    got = frontend(wave)
    assert got.shape == (3, 1, 256, 65) and got.is_contiguous()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    masked = frontend.train()(wave)
    assert (masked == torch.log(torch.tensor(1e-5))).any() and not (got == torch.log(torch.tensor(1e-5))).any()


def test_cpmel_masks_after_log_only_in_training():
    torch.manual_seed(0)
    mel = CpMel(freqm=48, timem=20)
    wave = torch.randn(4, ONE_SECOND)
    assert fully_masked(mel.train()(wave))
    assert not fully_masked(mel.eval()(wave))


def test_cpmel_fmax_jitter_only_in_training():
    torch.manual_seed(0)
    mel = CpMel(fmax_aug_range=1000)
    assert mel.fmax == 15_500.0  # sr / 2 - range / 2
    wave = torch.randn(1, ONE_SECOND)
    assert torch.equal(mel.eval()(wave), mel(wave))
    assert not torch.allclose(mel.train()(wave), mel.eval()(wave))


# --- complexity --------------------------------------------------------------------------------------------------

def test_cpresnet_128k_complexity():
    model = create_model("cpresnet_128k")
    assert model.input_shape() == (1, 1, 256, 43)
    assert count(model.net, (1, 1, 256, 43)) == (127_684, 28_840_396)


def test_baseline_complexity():
    assert count(create_model("cpmobile_baseline").net, (1, 1, 256, 65)) == (61_148, 29_419_156)


@pytest.mark.parametrize("name", PAPER_DSF)
def test_dsflexinet_matches_paper(name):
    model = create_model(name)
    assert model.input_shape() == (1, 1, 256, 64)
    params, macs = count(model.net, (1, 1, 256, 64))
    paper_params, paper_macs = PAPER_DSF[name]
    assert abs(params / paper_params - 1) <= 0.05
    assert abs(macs / paper_macs - 1) <= 0.05


def test_dsflexinet_sm4_needs_int8():
    params = sum(p.numel() for p in create_model("dsflexinet_sm4").net.parameters())
    assert params * 4 > 128_000
    assert params * 1 <= 128_000


# --- registry ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [n for n in list_models() if n not in ("passt_paper", "beats_paper")])
def test_every_model_builds_with_n_classes(name):
    model = create_model(name, n_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(2, ONE_SECOND)).shape == (2, 3)


# --- PaSST -------------------------------------------------------------------------------------------------------

def test_passt_small_trains_on_one_second():
    model = create_model("passt_small").train()
    logits = model(torch.randn(2, ONE_SECOND))
    assert logits.shape == (2, 10)
    logits.sum().backward()
    assert model.net.patch_embed.proj.weight.grad is not None


def test_passt_patchout_only_in_training():
    net = create_model("passt_tiny", s_patchout_f=6, s_patchout_t=2, u_patchout=5).net
    x = torch.randn(2, 1, 128, 100)  # 12 x 9 patch grid
    assert net.eval().tokens(x).shape[1] == 2 + 12 * 9
    assert net.train().tokens(x).shape[1] == 2 + (12 - 6) * (9 - 2) - 5


def test_passt_attention_visible_to_flop_counter():
    net = create_model("passt_tiny").net.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.randn(1, 1, 128, 100))
    assert counter.get_flop_counts()["Global"].get(torch.ops.aten.bmm, 0) > 0


def published_passt_layout(depth=12, dim=768, mlp=3072, n_classes=527, f_grid=12, t_grid=99) -> dict:
    """kkoutini/PaSST models/passt.py, ``passt_s_swa_p16_128_ap476`` (distilled ViT-B, patch 16, stride 10)."""
    layout = {
        "cls_token": (1, 1, dim), "dist_token": (1, 1, dim), "new_pos_embed": (1, 2, dim),
        "freq_new_pos_embed": (1, dim, f_grid, 1), "time_new_pos_embed": (1, dim, 1, t_grid),
        "patch_embed.proj.weight": (dim, 1, 16, 16), "patch_embed.proj.bias": (dim,),
    }
    for i in range(depth):
        layout.update({
            f"blocks.{i}.norm1.weight": (dim,), f"blocks.{i}.norm1.bias": (dim,),
            f"blocks.{i}.attn.qkv.weight": (3 * dim, dim), f"blocks.{i}.attn.qkv.bias": (3 * dim,),
            f"blocks.{i}.attn.proj.weight": (dim, dim), f"blocks.{i}.attn.proj.bias": (dim,),
            f"blocks.{i}.norm2.weight": (dim,), f"blocks.{i}.norm2.bias": (dim,),
            f"blocks.{i}.mlp.fc1.weight": (mlp, dim), f"blocks.{i}.mlp.fc1.bias": (mlp,),
            f"blocks.{i}.mlp.fc2.weight": (dim, mlp), f"blocks.{i}.mlp.fc2.bias": (dim,),
        })
    layout.update({
        "norm.weight": (dim,), "norm.bias": (dim,), "head.0.weight": (dim,), "head.0.bias": (dim,),
        "head.1.weight": (n_classes, dim), "head.1.bias": (n_classes,),
        "head_dist.weight": (n_classes, dim), "head_dist.bias": (n_classes,),
    })
    return layout


def test_passt_paper_matches_published_checkpoint_layout():
    with torch.device("meta"):
        net = create_model("passt_paper", n_classes=527).net
    state = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert state == published_passt_layout()
    assert sum(v.numel() for v in net.state_dict().values()) == 86_153_758


def test_load_passt_checkpoint_replaces_head_explicitly(tmp_path):
    torch.save(create_model("passt_tiny", n_classes=527).net.state_dict(), tmp_path / "ckpt.pt")
    model = create_model("passt_tiny", n_classes=10)
    report = load_passt_checkpoint(model, tmp_path / "ckpt.pt")
    assert report["replaced_head"] == {
        "head.1.weight": ((527, 96), (10, 96)), "head.1.bias": ((527,), (10,)),
        "head_dist.weight": ((527, 96), (10, 96)), "head_dist.bias": ((527,), (10,)),
    }
    source = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert torch.equal(model.net.blocks[1].mlp.fc2.weight, source["blocks.1.mlp.fc2.weight"])

    with pytest.raises(ValueError, match="time_new_pos_embed"):  # other shape mismatches are errors
        load_passt_checkpoint(create_model("passt_tiny", max_frames=200), tmp_path / "ckpt.pt")
    del source["norm.bias"]
    torch.save(source, tmp_path / "partial.pt")
    with pytest.raises(KeyError, match="norm.bias"):
        load_passt_checkpoint(create_model("passt_tiny"), tmp_path / "partial.pt")


@pytest.mark.parametrize("arch", ["passt_tiny", "cpresnet_half", "cpmobile_baseline"])
def test_pretrained_weights_load_with_every_classifier_head_dropped(arch):
    """Corpus pre-training (36 event classes) into a 10-scene model: each head over the classes is dropped —
    PaSST's distillation-token head too — and everything else loads as it was."""
    pre = create_model(arch, n_classes=36)
    model = create_model(arch, n_classes=10)
    dropped = load_pretrained(model, pre.state_dict())
    state = model.state_dict()
    assert dropped and all(k.startswith(HEAD_PREFIXES) for k in dropped)
    assert all(torch.equal(state[k], v) for k, v in pre.state_dict().items() if k not in dropped)
    assert all(state[k].shape[0] == 10 for k in dropped if k.endswith("weight") and state[k].dim() == 2)


# --- Residual Normalization ----------------------------------------------------------------------------------------

def test_resnorm_lambda_is_trainable_and_shape_kept():
    rn = ResidualNorm()
    x = torch.randn(2, 4, 16, 8)
    y = rn(x)
    assert y.shape == x.shape
    y.square().sum().backward()
    assert rn.lam.requires_grad and rn.lam.grad is not None


@pytest.mark.parametrize("axis, dims, other", [("channel", (2, 3), (1, 3)), ("frequency", (1, 3), (2, 3))])
def test_resnorm_axes_normalise_different_statistics(axis, dims, other):
    # Per-channel and per-frequency offsets and scales, so neither axis' statistics start near (0, 1).
    noise = torch.randn(2, 4, 16, 8, generator=torch.Generator().manual_seed(0))
    channel = torch.arange(1, 5.0).view(1, 4, 1, 1)
    x = noise * channel + 3 * channel + torch.arange(16.0).view(1, 1, 16, 1)
    y = ResidualNorm(axis, lam=0.0)(x)
    assert torch.allclose(y.mean(dim=dims), torch.zeros(()), atol=1e-5)
    assert torch.allclose(y.var(dim=dims, unbiased=False), torch.ones(()), atol=1e-3)
    assert y.mean(dim=other).abs().max() > 0.5  # the other axis' statistics are left alone


# --- quantization ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", STUDENTS)
def test_fx_qat_prepare_and_convert(name):
    torch.manual_seed(0)
    model = create_model(name)
    x = torch.randn(2, *model.input_shape()[1:])
    prepared = prepare_qat_fx(copy.deepcopy(model.net).train(), get_default_qat_qconfig_mapping("x86"), (x,))
    # One QAT step before converting, as in real use; a zero BN scale would surface here as a NaN loss/gradient.
    loss = torch.nn.functional.cross_entropy(prepared(x), torch.tensor([0, 1]))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in prepared.parameters() if p.grad is not None)
    torch.optim.SGD(prepared.parameters(), lr=0.01).step()
    quantized = convert_fx(prepared.eval())
    out = quantized(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert any(m.__class__.__module__.startswith("torch.ao.nn.quantized") for m in quantized.modules())


class _LayoutProbe(L.Callback):
    """Records, at every training batch, whether the network's convolution weights are channels-last."""

    def __init__(self):
        self.seen: list[bool] = []

    def on_train_batch_start(self, trainer, task, batch, batch_idx):
        convs = [m.weight for m in task.model.net.modules() if isinstance(m, torch.nn.Conv2d)]
        self.seen.append(all(w.is_contiguous(memory_format=torch.channels_last) for w in convs))


def test_a_network_trains_in_the_layout_it_declares_and_is_saved_in_the_default_one():
    # DS-FlexiNet measured slower channels-last: it keeps the default layout
    assert declared_memory_format(create_model("dsflexinet_sm1").net) == torch.contiguous_format
    torch.manual_seed(0)
    clips = [{"wave": 0.1 * torch.randn(ONE_SECOND // 4), "label": i % 4, "device": 0} for i in range(8)]
    batches = torch.utils.data.DataLoader(clips, batch_size=4)
    task = ClassifierTask(create_model("cpmobile_baseline"), OptimConfig.from_config({"batch_size": 4}))
    probe = _LayoutProbe()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    L.Trainer(max_epochs=1, accelerator="cpu", deterministic=True, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, callbacks=[probe]).fit(task, batches)
    torch.use_deterministic_algorithms(False)
    assert probe.seen == [True, True]
    assert all(p.is_contiguous() for p in task.model.parameters())  # what is saved, quantized and exported
    assert torch.utils.deterministic.fill_uninitialized_memory == fill
