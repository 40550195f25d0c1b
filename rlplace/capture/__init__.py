"""Capture a PyTorch model into an `OpGraph`: one op per ATen call of one training step.

The model is traced with ``torch.export.export(..., strict=False)``; parameters and inputs on
the ``meta`` device (or real ones, which export turns into fake tensors) mean a 7B-parameter
model costs no weight memory. For a training graph the exported program is traced again by
AOTAutograd (``aot_export_joint_with_descriptors``) into the *joint* graph: the real forward
and backward ATen ops, linked by the tensors the backward pass reads (saved activations).
The joint trace runs on fake CPU tensors (see `rlplace.capture.training._on_fake_cpu`); if
it fails, the backward pass is derived from the forward ops by the rule of
`rlplace.capture.training.add_backward_by_rule` and ``graph.meta["backward"]`` says so.

Per op:

- ``kind``: a cost category of `rlplace.costs.COMPUTE_EFFICIENCY` (matmul, conv, attention,
  embedding, norm, elementwise, reduction, optimizer, other), ``view`` for ops that only
  reinterpret memory (cost 0), ``input`` for the model's input tensors;
  ``graph.meta["aten_targets"]`` keeps the exact ATen overload of every op.
- ``flops``: what ``torch.utils.flop_counter.FlopCounterMode`` counts for the op (matmuls,
  convolutions, attention; element-wise ops count 0, they are bandwidth bound), so the sum
  over forward ops equals FlopCounterMode over the module's forward.
- ``bytes_accessed``: bytes of the distinct tensors read plus bytes written (0 for views).
- ``output_bytes``: bytes of the op's output tensors; for a view, at most its base's bytes.
- ``param_bytes``: each parameter counted once, on its first user (views of a parameter are
  folded into the parameter); later users get an edge from that owner carrying the
  parameter's bytes. ``graph.meta["op_params"]``/``["op_buffers"]`` name them per op.
- ``resident_bytes``: parameters and buffers, plus for training the gradient (parameter's
  dtype) and the optimizer state (`OPTIMIZERS`, fp32) of every trainable parameter.
- ``graph.meta["module_paths"]``: the owning module of every op (``nn_module_stack``; for
  backward ops the forward op's module).

Training graphs put every backward op in the colocation class of the forward op it
differentiates (autograd's ``seq_nr``), and add one ``optimizer`` op per trainable parameter,
fed by the parameter's gradient and colocated with the parameter's owner.

Modules: `rlplace.capture.api` (entry points, export, error messages),
`rlplace.capture.builder` (fx graph -> ops and edges -> OpGraph),
`rlplace.capture.training` (joint trace, backward rule, optimizer ops),
`rlplace.capture.opfacts` (kind, FLOPs and bytes of one node).
"""

from __future__ import annotations

from rlplace.capture.api import BACKWARD_MODES, capture_model
from rlplace.capture.opfacts import op_kind
from rlplace.capture.training import OPTIMIZER_STATE_BYTES, OPTIMIZERS, OptimizerSpec

__all__ = ["BACKWARD_MODES", "OPTIMIZERS", "OPTIMIZER_STATE_BYTES", "OptimizerSpec", "capture_model", "op_kind"]
