"""OverLoCK encoders (``tu-overlock_*``) under every segmentation_models_pytorch architecture, output strides 16 and 8
included, and ImageNet or dense-backbone weights loaded into an smp encoder."""
from __future__ import annotations

import warnings

import pytest
import timm
import torch

smp = pytest.importorskip("segmentation_models_pytorch", reason="segmentation-models-pytorch is not installed "
                                                                "(pip install -e '.[seg]')")

ARCHITECTURES = sorted(smp.MODEL_ARCHITECTURES_MAPPING)


def _encoder_state(model) -> dict[str, torch.Tensor]:
    """The OverLoCK weights inside an smp model (timm's feature wrapper keeps the model under ``model.``)."""
    return {k.removeprefix("model."): v for k, v in model.encoder.model.state_dict().items()}


def _build(arch: str, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # smp's notes on encoder weights for tu- encoders
        return smp.create_model(arch, encoder_name="tu-test_overlock", classes=3, **kwargs)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_segments(arch):
    torch.manual_seed(0)
    model = _build(arch, encoder_weights=None).eval()
    x = torch.randn(2, 3, 128, 160)  # PAN's pooling pyramid needs stride-16 maps of 8 or more
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 3, 128, 160) and torch.isfinite(out).all()


@pytest.mark.parametrize("arch, stride", [("deeplabv3", 8), ("deeplabv3plus", 16), ("pan", 16)])
def test_dilated_encoders_of_the_deeplab_family(arch, stride):
    """These decoders ask for output_stride 8 or 16: the encoder's last maps stay at that stride."""
    model = _build(arch, encoder_weights=None).eval()
    assert model.encoder.model.feature_info.reduction()[-1] == stride
    with torch.no_grad():
        features = model.encoder(torch.randn(1, 3, 64, 64))
    assert features[-1].shape[-1] == 64 // stride


def test_imagenet_weights_load_into_an_smp_encoder(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("test_overlock")
    path = tmp_path / "in1k.pth"
    torch.save({"model": source.state_dict()}, path)
    model = _build("deeplabv3plus", encoder_weights=True, pretrained_cfg_overlay=dict(file=str(path)))
    encoder = _encoder_state(model)
    for name, value in source.state_dict().items():
        if not name.startswith(("head.", "aux_head.")):
            assert torch.equal(encoder[name], value), name


def test_segmentation_backbone_weights_load_with_dense_form(tmp_path):
    """The ``backbone.`` part of an UperNet checkpoint fits the segmentation form, not the detection form."""
    from overlock.models import CheckpointMismatchError
    from overlock.segmentation.upernet import create_upernet

    torch.manual_seed(0)
    upernet = create_upernet("test_overlock", num_classes=3, channels=16, aux_channels=8)
    path = tmp_path / "upernet.pth"
    torch.save({"meta": {"iter": 1}, "state_dict": upernet.state_dict()}, path)
    model = _build("unet", encoder_weights=True, dense_form="segmentation", pretrained_cfg_overlay=dict(file=str(path)))
    assert _encoder_state(model).keys() == upernet.backbone.state_dict().keys()
    for name, value in upernet.backbone.state_dict().items():
        assert torch.equal(_encoder_state(model)[name], value), name
    with pytest.raises(CheckpointMismatchError, match="dense_form='segmentation'"):
        _build("unet", encoder_weights=True, pretrained_cfg_overlay=dict(file=str(path)))
