"""Models and weight surgery: shapes, no NaNs, every parameter learns, inflation reproduces 2D."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torchvision
from torch import nn

from trainers.models import adapt_input_conv, build_model, inflate_conv_weight, inflate_googlenet, load_pretrained


def test_adapt_input_conv_averages_rgb_and_replicates():
    w = torch.randn(8, 3, 7, 7, dtype=torch.float64)
    out = adapt_input_conv(10, w)
    assert out.shape == (8, 10, 7, 7) and out.dtype == torch.float64
    for c in range(10):
        assert torch.allclose(out[:, c], w.mean(1))
    assert adapt_input_conv(3, w) is w
    with pytest.raises(NotImplementedError, match="3 RGB input channels, got 2"):
        adapt_input_conv(4, torch.randn(8, 2, 3, 3))
    with pytest.raises(NotImplementedError, match="cannot adapt a 2D conv weight"):
        adapt_input_conv(4, torch.randn(8, 3))


def test_inflated_conv_reproduces_the_2d_conv_on_a_constant_clip():
    conv2d = nn.Conv2d(3, 5, 3, padding=1)
    conv3d = nn.Conv3d(3, 5, (3, 3, 3), padding=(1, 1, 1))
    with torch.no_grad():
        conv3d.weight.copy_(inflate_conv_weight(conv2d.weight, 3))
        conv3d.bias.copy_(conv2d.bias)
    assert conv3d.weight.shape == (5, 3, 3, 3, 3) and conv3d.weight.dtype == conv2d.weight.dtype
    img = torch.randn(2, 3, 9, 9)
    clip = img[:, :, None].repeat(1, 1, 6, 1, 1)
    with torch.no_grad():
        out2d, out3d = conv2d(img), conv3d(clip)
    for t in range(1, 5):  # interior time steps (the zero-padded ends differ)
        assert torch.allclose(out3d[:, :, t], out2d, atol=1e-5)


def _kaiming(net: nn.Module) -> nn.Module:
    """Weights that keep activations at a visible scale through a deep net (the test needs a real signal)."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
    return net


def test_i3d_inflation_reproduces_googlenet_on_a_temporally_constant_clip():
    torch.manual_seed(0)
    net2d = _kaiming(torchvision.models.googlenet(weights=None, aux_logits=False, transform_input=False, init_weights=False)).eval()
    net3d = inflate_googlenet(copy.deepcopy(net2d)).eval()
    img = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = net2d(img)
        got = net3d(img[:, :, None].repeat(1, 1, 8, 1, 1))
        other = net3d(torch.randn(2, 3, 8, 64, 64))
    assert expected.abs().mean() > 1e-2  # a real signal, not vanishing activations
    assert torch.allclose(got, expected, rtol=1e-3, atol=1e-4 * expected.abs().max().item())
    assert not torch.allclose(other, expected, rtol=1e-2)


@pytest.mark.parametrize(
    "name, shape",
    [("tsn_rgb", (2, 3, 3, 64, 64)), ("tsn_flow", (2, 3, 10, 64, 64)), ("i3d_rgb", (2, 3, 8, 64, 64)), ("i3d_flow", (2, 2, 8, 64, 64))],
)
def test_models_output_shape_no_nan_and_every_parameter_gets_a_gradient(name, shape):
    torch.manual_seed(0)
    model = build_model(name, num_classes=5)
    model.train()
    out = model(torch.randn(*shape))
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    without = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert not without, f"no gradient for {without[:5]}"


def test_i3d_averages_test_clips():
    model = build_model("i3d_flow", num_classes=3).eval()
    clips = torch.randn(1, 2, 2, 8, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(clips), (model(clips[:, 0]) + model(clips[:, 1])) / 2, atol=1e-5)


def test_tsn_consensus_averages_segments():
    model = build_model("tsn_rgb", num_classes=4).eval()
    x = torch.randn(1, 2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), (model(x[:, :1]) + model(x[:, 1:])) / 2, atol=1e-5)


def test_load_pretrained_adapts_the_stem_and_drops_a_foreign_classifier(tmp_path):
    imagenet = torchvision.models.resnet18(weights=None).state_dict()  # stands in for a local ImageNet file
    model = build_model("tsn_flow", num_classes=7, pretrained=imagenet)
    stem = model.backbone.conv1.weight
    assert stem.shape == (64, 10, 7, 7)
    assert torch.allclose(stem[:, 4], imagenet["conv1.weight"].mean(1))
    assert torch.equal(model.backbone.layer1[0].conv1.weight, imagenet["layer1.0.conv1.weight"])
    assert model.fc.out_features == 7
    i3d = build_model(
        "i3d_rgb", num_classes=7, pretrained=torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True).state_dict()
    )
    assert i3d.backbone.conv1.conv.conv.weight.shape == (64, 3, 7, 7, 7)
    with pytest.raises(ValueError, match="has shape"):
        load_pretrained(nn.Linear(3, 4), {"weight": torch.zeros(5, 3)}, in_chans=3, num_classes=4, classifier="head")


def test_pretrained_weights_say_what_was_loaded_and_foreign_ones_are_refused(tmp_path):
    resnet = torchvision.models.resnet18(weights=None).state_dict()
    model = build_model("tsn_flow", num_classes=7, pretrained=resnet)
    summary = model.pretrained_summary
    assert f"of the model's {len(model.state_dict())} tensors loaded" in summary and "\n" not in summary
    assert "backbone.conv1.weight adapted from 3 to 10 input channels" in summary and "for 7 classes" in summary
    googlenet = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True).state_dict()
    assert (
        "inflated to 3D, the stem adapted to 2 channels" in build_model("i3d_flow", num_classes=7, pretrained=googlenet).pretrained_summary
    )
    with pytest.raises(ValueError, match="none of the .* tensors of the pretrained weights"):
        build_model("i3d_rgb", num_classes=7, pretrained=resnet)  # ResNet weights for an Inception network


def test_a_file_that_is_not_a_state_dict_is_one_sentence(tmp_path):
    from trainers.run_folder import read_state_dict

    with pytest.raises(ValueError, match=r"^pretrained weights w.csv are not a PyTorch state dict \(.*\); pass a \.pth") as error:
        read_state_dict("w.csv", b"a,b\n1,2\n")
    assert "\n" not in str(error.value)
    buffer = io.BytesIO()
    torch.save([1, 2], buffer)
    with pytest.raises(ValueError, match="hold no state dict of tensors"):
        read_state_dict("list.pth", buffer.getvalue())
    buffer = io.BytesIO()
    torch.save({"model": {"w": torch.ones(2)}, "epoch": 3}, buffer)  # a checkpoint: its model's weights
    assert torch.equal(read_state_dict("ckpt.pt", buffer.getvalue())["w"], torch.ones(2))
