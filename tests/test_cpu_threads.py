"""LESIONSEG_CPU_THREADS: its default, and the onnxruntime sessions it configures."""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto, helper

from lesionseg.models.backends.onnx_runner import inference_session
from lesionseg.settings import Settings


def test_default_is_the_cores_this_process_may_use(monkeypatch):
    monkeypatch.delenv("LESIONSEG_CPU_THREADS", raising=False)
    assert Settings().cpu_threads == len(os.sched_getaffinity(0))
    monkeypatch.setenv("LESIONSEG_CPU_THREADS", "3")
    assert Settings().cpu_threads == 3


def test_sessions_take_the_threads_and_do_not_spin(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)

    session = inference_session(path, "cpu", threads=1)
    options = session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    out = session.run(None, {"x": np.array([-1.0, 2.0], np.float32)})[0]
    np.testing.assert_array_equal(out, [0.0, 2.0])
    assert inference_session(path, "cpu").get_session_options().intra_op_num_threads == 0
