import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from singe_deploy.errors import UserError
from singe_deploy.measure import onnx_flops
from singe_deploy.measure.flops import count, cross_check

from ..conftest import TinyNet


def _init(name, *shape):
    return numpy_helper.from_array(np.random.default_rng(0).random(shape, dtype=np.float32), name)


def _graph(nodes, inits, in_shape, save=None):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)
    y = helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 18)])
    if save:
        onnx.save(model, save)
    return model


def test_formulas_on_a_hand_built_graph():
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], group=2, strides=[2, 2], pads=[1, 1, 1, 1]),  # 4->6, 8x8 -> 4x4
        helper.make_node("ConvTranspose", ["c1", "w2"], ["c2"], group=2, strides=[2, 2]),  # 6->4, 4x4 -> 8x8
        helper.make_node("BatchNormalization", ["c2", "s", "b", "mean", "var"], ["n"]),
        helper.make_node("Flatten", ["n"], ["f"]),
        helper.make_node("Gemm", ["f", "w3"], ["g"], transB=1),  # 256 -> 5
        helper.make_node("Reshape", ["g", "shape"], ["r"]),
        helper.make_node("MatMul", ["r", "w4"], ["out"]),  # (1,5,1) x (1,3): batched by broadcasting
    ]
    inits = [_init("w1", 6, 2, 3, 3), _init("w2", 6, 2, 2, 2), _init("s", 4), _init("b", 4), _init("mean", 4),
             _init("var", 4), _init("w3", 5, 256), numpy_helper.from_array(np.array([1, 5, 1]), "shape"),
             _init("w4", 1, 3)]
    g = onnx_flops.count(_graph(nodes, inits, ["batch", 4, 8, 8]))
    conv = 6 * 16 * 2 * 9
    deconv = 6 * 16 * 2 * 4  # input elements x out/groups x kernel
    assert g.macs == conv + deconv + 5 * 256 + 15 * 1
    assert g.params == 6 * 2 * 9 + 6 * 2 * 4 + 4 + 4 + 5 * 256 + 3  # running mean/var are buffers
    assert g.input_shape == [1, 4, 8, 8] and g.opset == 18


def test_einsum_counts_and_ops_it_cannot_read_are_reported():
    nodes = [helper.make_node("Einsum", ["x", "w"], ["e"], equation="b...i,ij->b...j"),
             helper.make_node("FusedMatMul", ["e", "w2"], ["y"], domain="com.microsoft")]
    model = _graph(nodes, [_init("w", 4, 3), _init("w2", 3, 2)], ["batch", 5, 4])
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    g = onnx_flops.count(model)
    assert g.macs == 5 * 4 * 3  # b=1, ...=5, i=4, j=3
    assert g.uncounted == ["FusedMatMul"]


@pytest.mark.parametrize("model,shape", [
    (TinyNet(), (1, 1, 12, 12)),  # residual add, grouped and depthwise convs, folded norms
    (nn.Sequential(nn.ConvTranspose2d(3, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.LazyLinear(5)), (1, 3, 6, 6)),
    (nn.Sequential(nn.Flatten(2), nn.Unflatten(1, (1, 3)), nn.Flatten(1, 2),
                   nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), nn.Flatten(), nn.Linear(48, 3)),
     (1, 3, 4, 4)),
], ids=["tiny", "deconv", "attention"])
def test_the_graph_count_agrees_with_the_model_count(model, shape):
    model(torch.zeros(shape))  # materialize lazy layers
    model.eval()
    costs = count(model, shape)
    check = cross_check(model, costs)
    assert check["macs"] == costs.macs and check["agree"] and check["layer_differences"] == []
    assert check["params_agree"], check


def test_shapes_inference_cannot_see_are_read_from_a_run(monkeypatch, tmp_path):
    model = TinyNet().eval()
    from singe_deploy.deploy.export import export_onnx

    export_onnx(model, (1, 1, 12, 12), tmp_path / "m.onnx", external_data=True)  # weights in a side file
    assert len(list(tmp_path.iterdir())) == 2
    direct = onnx_flops.count(tmp_path / "m.onnx")
    real = onnx_flops._shapes
    monkeypatch.setattr(onnx_flops, "_shapes", lambda m: {k: v for k, v in real(m).items() if k in
                                                          {i.name for i in m.graph.initializer}})
    assert onnx_flops.count(tmp_path / "m.onnx").macs == direct.macs == count(model, (1, 1, 12, 12)).macs


def test_bad_files_and_shapes(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        onnx_flops.count(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(UserError, match="not a readable ONNX model|holds no ONNX graph"):
        onnx_flops.count(tmp_path / "junk.onnx")
    conv = [helper.make_node("Conv", ["x", "w"], ["y"])]
    dynamic = _graph(conv, [_init("w", 2, 3, 1, 1)], ["batch", 3, "h", "w"])
    with pytest.raises(UserError, match="dynamic dimensions"):
        onnx_flops.count(dynamic)
    assert onnx_flops.count(dynamic, [1, 3, 4, 4]).macs == 2 * 16 * 3
    with pytest.raises(UserError, match="does not fit"):
        onnx_flops.count(_graph(conv, [_init("w", 2, 3, 1, 1)], ["batch", 3, 4, 4]), [1, 1, 4, 4])
