"""BEATs: front-end, forward shapes, the published checkpoint layout, strict checkpoint loading, and the masked patch
prediction pieces for its self-supervised pre-training (random-projection tokenizer, 75 % masking)."""

from __future__ import annotations

import math

import pytest
import torch
import torchaudio
from torch.utils.flop_counter import FlopCounterMode

from bench.models import create_model
from bench.models.beats import BEATs, KaldiFbank, load_beats_checkpoint, relative_buckets, save_beats_checkpoint
from bench.models.pretrained import HEAD_PREFIXES, load_pretrained
from bench.train.ssl import MaskedPatchObjective, RandomProjectionTokenizer, patches, random_mask

ONE_SECOND = 32_000
TINY = dict(input_patch_size=16, embed_dim=64, conv_bias=False, encoder_layers=3, encoder_embed_dim=96,
            encoder_ffn_embed_dim=384, encoder_attention_heads=4, activation_fn="gelu", layer_norm_first=False,
            deep_norm=True, conv_pos=16, conv_pos_groups=4, relative_position_embedding=True, num_buckets=320,
            max_distance=800, gru_rel_pos=True)


# --- front-end and network -------------------------------------------------------------------------------------------

def test_frontend_is_beats_preprocess_on_resampled_audio():
    wave = 0.1 * torch.randn(2, ONE_SECOND, generator=torch.Generator().manual_seed(0))
    x = KaldiFbank().eval()(wave)
    assert x.shape == (2, 1, 128, 98)  # frequency on dim 2, as every harness front-end
    clip = torchaudio.functional.resample(wave[1], 32_000, 16_000).unsqueeze(0) * 2 ** 15
    fbank = torchaudio.compliance.kaldi.fbank(clip, num_mel_bins=128, sample_frequency=16_000, frame_length=25,
                                              frame_shift=10)
    assert torch.allclose(x[1, 0], ((fbank - 15.41663) / (2 * 6.55582)).T, atol=1e-5)


def test_tiny_forward_shapes_and_trains():
    torch.manual_seed(0)
    model = create_model("beats_tiny").train()
    assert model.input_shape() == (1, 1, 128, 98)
    logits = model(torch.randn(4, ONE_SECOND))
    assert logits.shape == (4, 10)
    logits.square().sum().backward()
    grad = model.net.patch_embedding.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    net = model.net.eval()
    tokens = net.embed(torch.randn(2, 1, 128, 98))
    assert tokens.shape == (2, 6 * 8, 96) and net.encode(tokens).shape == (2, 48, 96)
    x = torch.randn(2, 1, 128, 98)
    with torch.no_grad():
        assert torch.allclose(net(x), net.head(net.encode(net.embed(x))).mean(dim=1))


def test_patch_order_is_time_major_in_encoder_and_tokenizer():
    """One non-zero 16 x 16 tile at time patch 2, frequency patch 5 -> token 2 * 8 + 5 in both."""
    x = torch.zeros(1, 1, 128, 98)
    x[..., 5 * 16:6 * 16, 2 * 16:3 * 16] = torch.randn(16, 16)
    net = create_model("beats_tiny").net.eval()
    with torch.no_grad():
        tokens = net.embed(x)[0]
    moved = (tokens - tokens[0]).abs().sum(dim=1) > 1e-4
    assert moved.nonzero().flatten().tolist() == [21]
    assert (patches(x, 16)[0].abs().sum(dim=1) > 0).nonzero().flatten().tolist() == [21]


def test_attention_visible_to_flop_counter():
    net = create_model("beats_tiny").net.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.randn(1, 1, 128, 98))
    assert counter.get_flop_counts()["Global"].get(torch.ops.aten.bmm, 0) > 0


def test_relative_buckets_match_the_t5_scheme():
    b = relative_buckets(700, num_buckets=320, max_distance=800)
    assert b[0, 0] == 0 and b[5, 3] == 2 and b[3, 5] == 160 + 2  # exact below 80, positive offsets in the top half
    assert b[0, 79] == 160 + 79 and b[0, 80] == 160 + 80  # log range starts at max_exact
    assert b[0, 699] == 160 + 80 + int(math.log(699 / 80) / math.log(800 / 80) * 80)
    assert int(b.max()) <= 319 and int(b.min()) >= 0


# --- published layout and checkpoints -------------------------------------------------------------------------------

def published_beats_layout(depth=12, dim=768, ffn=3072, heads=12, patch_dim=512, patch=16, conv_pos=128,
                           groups=16, buckets=320, n_classes=527) -> dict:
    """microsoft/unilm beats/BEATs.py + backbone.py, a fine-tuned iter3+ checkpoint's ``model`` (predictor over the
    527 AudioSet classes). Weight norm ``dim=2`` keeps one gain per kernel tap; the relative position table is one
    module shared by every layer, so every layer stores it; grep_linear maps a head's query to 8 gate logits."""
    layout = {
        "patch_embedding.weight": (patch_dim, 1, patch, patch),
        "layer_norm.weight": (patch_dim,), "layer_norm.bias": (patch_dim,),
        "post_extract_proj.weight": (dim, patch_dim), "post_extract_proj.bias": (dim,),
        "encoder.pos_conv.0.weight_g": (1, 1, conv_pos), "encoder.pos_conv.0.weight_v": (dim, dim // groups, conv_pos),
        "encoder.pos_conv.0.bias": (dim,),
        "encoder.layer_norm.weight": (dim,), "encoder.layer_norm.bias": (dim,),
        "predictor.weight": (n_classes, dim), "predictor.bias": (n_classes,),
    }
    for i in range(depth):
        p = f"encoder.layers.{i}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            layout[f"{p}self_attn.{proj}.weight"], layout[f"{p}self_attn.{proj}.bias"] = (dim, dim), (dim,)
        layout.update({
            f"{p}self_attn.relative_attention_bias.weight": (buckets, heads),
            f"{p}self_attn.grep_linear.weight": (8, dim // heads), f"{p}self_attn.grep_linear.bias": (8,),
            f"{p}self_attn.grep_a": (1, heads, 1, 1),
            f"{p}self_attn_layer_norm.weight": (dim,), f"{p}self_attn_layer_norm.bias": (dim,),
            f"{p}fc1.weight": (ffn, dim), f"{p}fc1.bias": (ffn,), f"{p}fc2.weight": (dim, ffn), f"{p}fc2.bias": (dim,),
            f"{p}final_layer_norm.weight": (dim,), f"{p}final_layer_norm.bias": (dim,),
        })
    return layout


def as_released(key: str) -> str:
    return "predictor." + key[len("head."):] if key.startswith("head.") else key


def test_paper_matches_published_checkpoint_layout():
    with torch.device("meta"):
        net = create_model("beats_paper", n_classes=527).net
    layout = published_beats_layout()
    assert {as_released(k): tuple(v.shape) for k, v in net.state_dict().items()} == layout
    total = sum(math.prod(s) for s in layout.values())
    assert total == 90_759_295
    # the shared table counted once: BEATs' ~90 M parameters
    assert sum(p.numel() for p in net.parameters()) == total - 11 * 320 * 12 == 90_717_055


def released(net: BEATs, cfg: dict | None = None) -> dict:
    """A checkpoint in the released format, written here from the published names (not by save_beats_checkpoint)."""
    state = {as_released(k): v.clone() for k, v in net.state_dict().items()}
    return {"cfg": {**TINY, "finetuned_model": True, "predictor_class": net.head.out_features, **(cfg or {})},
            "model": state}


@pytest.fixture(scope="module")
def source() -> BEATs:
    torch.manual_seed(1)
    return create_model("beats_tiny", n_classes=527).net.eval()


def test_checkpoint_round_trip_and_head_handling(tmp_path, source):
    torch.save(released(source), tmp_path / "ft.pt")
    x = torch.randn(2, 1, 128, 98)

    same = create_model("beats_tiny", n_classes=527)
    report = load_beats_checkpoint(same, tmp_path / "ft.pt")
    assert report["head"] == "loaded" and report["config_checked"] and not report["dropped"]
    with torch.no_grad():
        assert torch.allclose(same.net.eval()(x), source(x), atol=1e-6)

    scene = create_model("beats_tiny", n_classes=10)
    fresh_head = scene.net.head.weight.detach().clone()
    report = load_beats_checkpoint(scene, tmp_path / "ft.pt")
    assert report["head"] == "kept"
    assert report["dropped"] == {"predictor.weight": ((527, 96), (10, 96)), "predictor.bias": ((527,), (10,))}
    assert torch.equal(scene.net.head.weight, fresh_head)
    assert torch.equal(scene.net.encoder.layers[2].fc2.weight, source.encoder.layers[2].fc2.weight)
    assert torch.equal(scene.net.encoder.pos_conv[0].weight_g, source.encoder.pos_conv[0].weight_g)

    # a bare state dict (no cfg), and a pre-trained checkpoint without predictor; our own writer round-trips too
    state = released(source)["model"]
    torch.save({k: v for k, v in state.items() if not k.startswith("predictor.")}, tmp_path / "pt.pt")
    report = load_beats_checkpoint(create_model("beats_tiny"), tmp_path / "pt.pt")
    assert report["head"] == "absent" and not report["config_checked"]
    save_beats_checkpoint(source, tmp_path / "ours.pt")
    mine = torch.load(tmp_path / "ours.pt", weights_only=True)
    assert mine["cfg"]["encoder_layers"] == 3 and set(mine["model"]) == set(state)
    assert load_beats_checkpoint(create_model("beats_tiny", n_classes=527), tmp_path / "ours.pt")["head"] == "loaded"


def test_checkpoint_errors_are_strict_and_name_the_key(tmp_path, source):
    model = create_model("beats_tiny")
    ckpt = released(source)
    del ckpt["model"]["encoder.layers.1.fc2.bias"]
    torch.save(ckpt, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"missing.pt.*missing \['encoder.layers.1.fc2.bias'\]"):
        load_beats_checkpoint(model, tmp_path / "missing.pt")

    ckpt = released(source)
    ckpt["model"]["encoder.layers.3.fc1.weight"] = torch.zeros(384, 96)
    torch.save(ckpt, tmp_path / "extra.pt")
    with pytest.raises(ValueError, match=r"unexpected \['encoder.layers.3.fc1.weight'\]"):
        load_beats_checkpoint(model, tmp_path / "extra.pt")

    ckpt = released(source)
    ckpt["model"]["post_extract_proj.weight"] = torch.zeros(96, 32)
    torch.save(ckpt, tmp_path / "shape.pt")
    with pytest.raises(ValueError, match=r"shape.pt.*post_extract_proj.weight: checkpoint \(96, 32\)"):
        load_beats_checkpoint(model, tmp_path / "shape.pt")

    torch.save(released(source, {"encoder_layers": 12, "encoder_embed_dim": 768}), tmp_path / "cfg.pt")
    with pytest.raises(ValueError, match=r"cfg.pt.*encoder_layers: checkpoint 12, model 3.*encoder_embed_dim"):
        load_beats_checkpoint(model, tmp_path / "cfg.pt")

    ckpt = released(source)
    del ckpt["cfg"]["relative_position_embedding"]  # absent means BEATsConfig's default, False
    torch.save(ckpt, tmp_path / "default.pt")
    with pytest.raises(ValueError, match="relative_position_embedding: checkpoint False, model True"):
        load_beats_checkpoint(model, tmp_path / "default.pt")

    ckpt = released(source)
    ckpt["model"]["encoder.layers.2.self_attn.relative_attention_bias.weight"] = torch.zeros(320, 4)
    torch.save(ckpt, tmp_path / "unshared.pt")
    with pytest.raises(ValueError, match="relative_attention_bias.weight differs"):
        load_beats_checkpoint(model, tmp_path / "unshared.pt")

    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="not a BEATs checkpoint"):
        load_beats_checkpoint(model, tmp_path / "list.pt")


# --- self-supervised pieces -------------------------------------------------------------------------------------

def test_tokenizer_is_frozen_deterministic_and_on_the_encoder_grid():
    x = torch.randn(3, 1, 128, 98, generator=torch.Generator().manual_seed(0))
    a, b, c = (RandomProjectionTokenizer(n_codes=64, code_dim=8, seed=s) for s in (7, 7, 8))
    labels = a(x)
    assert labels.shape == (3, 6 * 8) and labels.dtype == torch.long
    assert int(labels.min()) >= 0 and int(labels.max()) < 64
    assert torch.equal(labels, b(x)) and not torch.equal(labels, c(x))
    assert list(a.parameters()) == [] and set(a.state_dict()) == {"projection", "codebook"}
    assert torch.allclose(a.codebook.norm(dim=1), torch.ones(64))
    assert a(x * 3.0).equal(labels)  # cosine: the scale of a patch does not matter
    net = create_model("beats_tiny").net
    assert labels.shape[1] == net.embed(x).shape[1] == math.prod(net.grid(x))


def test_masking_replaces_75_percent_of_tokens_with_the_mask_embedding(monkeypatch):
    assert random_mask(4, 48).sum(dim=1).tolist() == [36] * 4
    net = create_model("beats_tiny").net
    objective = MaskedPatchObjective(96, n_codes=64)
    seen = {}
    encode = net.encode

    def spy(tokens):
        seen["tokens"] = tokens
        return encode(tokens)

    monkeypatch.setattr(net, "encode", spy)
    loss, accuracy = objective.loss(net, torch.randn(2, 1, 128, 98), torch.Generator().manual_seed(0))
    is_mask = (seen["tokens"] == objective.mask_embedding).all(dim=-1)
    assert is_mask.sum(dim=1).tolist() == [36, 36]
    assert torch.equal(is_mask, random_mask(2, 48, generator=torch.Generator().manual_seed(0)))
    assert loss.requires_grad and 0.0 <= float(accuracy) <= 1.0
    loss.backward()
    assert objective.mask_embedding.grad is not None and objective.predictor.weight.grad is not None


def structured(n_clips: int, seed: int, n_patterns: int = 4) -> torch.Tensor:
    """Stationary 'scenes': each of the 8 frequency bands of a clip holds one of a few fixed 16 x 16 patterns,
    repeated over time. A masked patch's label is predictable only from a visible patch of the same band."""
    templates = torch.randn(n_patterns, 16, 16, generator=torch.Generator().manual_seed(123))
    kinds = torch.randint(n_patterns, (n_clips, 8), generator=torch.Generator().manual_seed(seed))
    return templates[kinds].reshape(n_clips, 1, 128, 16).repeat(1, 1, 1, 7)[..., :98]


@pytest.fixture(scope="module")
def pretrained():
    """beats_tiny (36-class head, unused) after 150 Adam steps of masked patch prediction on 8 fixed clips."""
    torch.manual_seed(0)
    model = create_model("beats_tiny", n_classes=36)
    objective = MaskedPatchObjective(96, n_codes=64, code_dim=16, seed=0)
    features = structured(8, seed=0)
    opt = torch.optim.Adam([*model.net.parameters(), *objective.parameters()], lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matmuls: one thread is as fast, and far faster when the cores are shared
    try:
        for _ in range(150):  # held-out accuracy 0.72-0.78 for seeds 0-2 (0.60-0.65 after 100 steps); chance 0.29
            loss, _ = objective.loss(model.net, features, gen)
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval(), objective


def test_masked_objective_learns_beyond_chance_on_unseen_clips(pretrained):
    model, objective = pretrained
    held_out = structured(16, seed=99)
    labels = objective.tokenizer(held_out)
    chance = labels.unique(return_counts=True)[1].max().item() / labels.numel()  # always the commonest label
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        accuracy = sum(float(objective.loss(model.net, held_out, gen)[1]) for _ in range(4)) / 4
    assert chance < 0.4
    assert accuracy > chance + 0.3, (accuracy, chance)


def test_pretrained_state_is_a_scene_models_and_loads_dropping_only_the_head(pretrained):
    model, objective = pretrained
    scene = create_model("beats_tiny", n_classes=10)
    assert set(model.state_dict()) == set(scene.state_dict())
    assert not set(objective.state_dict()) & set(model.net.state_dict())
    dropped = load_pretrained(scene, model.state_dict())
    assert dropped == ["net.head.weight", "net.head.bias"] and all(k.startswith(HEAD_PREFIXES) for k in dropped)
    state = scene.state_dict()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items() if k not in dropped)
    assert scene(torch.randn(2, ONE_SECOND)).shape == (2, 10)
