import pytest
import torch

from cmi.models import LAYER_NAMES, VGG16, count_filters, count_params, layer_widths


def reference_params(widths, head, classes=10, hidden=4096):
    """Closed-form parameter count: conv (9*cin*cout + cout) + BN (2*cout) per layer, then the head."""
    total, cin = 0, 3
    for c in widths:
        total += 9 * cin * c + c + 2 * c
        cin = c
    if head == "linear":
        return total + cin * classes + classes
    return total + (cin * hidden + hidden) + (hidden * hidden + hidden) + (hidden * classes + classes)


# Pinned counts. 14,728,266 is the familiar size of the CIFAR VGG16-BN with a 512->10 head.
PINNED = {(1.0, "linear"): (4224, 14_728_266), (1.0, "mlp"): (4224, 33_646_666),
          (0.25, "linear"): (1056, 924_186), (0.25, "mlp"): (1056, 2_114_842),
          (0.125, "linear"): (528, 232_274), (0.125, "mlp"): (528, 532_690)}


@pytest.mark.parametrize("width, head", sorted(PINNED))
def test_filter_and_param_counts(width, head):
    model = VGG16(width=width, head=head)
    filters, params = PINNED[(width, head)]
    assert count_filters(model) == filters == sum(layer_widths(width))
    hidden = max(1, round(4096 * width))
    assert count_params(model) == params == reference_params(layer_widths(width), head, hidden=hidden)


def test_structure_and_feature_map_sizes():
    model = VGG16(width=0.125, head="linear").eval()
    assert len(model.convs()) == len(model.relus()) == len(LAYER_NAMES) == 13
    sizes = []
    hooks = [r.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1])) for r in model.relus()]
    out = model(torch.randn(2, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert out.shape == (2, 10)
    assert sizes == [32, 32, 16, 16, 8, 8, 8, 4, 4, 4, 2, 2, 2]


def test_bad_arguments():
    with pytest.raises(ValueError, match="head must be one of"):
        VGG16(head="deep")
    with pytest.raises(ValueError, match="width must be > 0"):
        layer_widths(0)
