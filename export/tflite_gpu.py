"""The TFLite GPU delegate's rules, checked on every op of a flatbuffer.

`tf.lite.experimental.Analyzer(..., gpu_compatibility=True)` is weak evidence (it
passes a WHILE model), so this module restates, in its own words, what the
delegate checks before it takes an op, from LiteRT's sources:

- `tflite/delegates/gpu/common/model_builder.cc`: `NewOperationParser` (the builtin
  ops that have a parser at all), `GetOpsToReplace` + `IsAllAllowedTensors` (every
  non-constant input and output is float32 or float16, except: int8/uint8 with
  quantized ops enabled, bool outputs of comparisons, bool/int32 around CAST, int32
  indices of ONE_HOT and GATHER, bool conditions of SELECT/SELECT_V2; no tensor of
  rank 5 or more), and the parsers' reading of constant weights as float32/float16
  (`CreateVectorCopyData<float>`: int8 weights are unreadable);
- `tflite/tools/versioning/gpu_compatibility.cc`: `CheckGpuDelegateCompatibility`,
  the per-op parameter rules (STRIDED_SLICE masks, SELECT_V2 broadcasting, ONE_HOT
  on/off values, runtime-input counts, ...).

Only the rules of the ops written out below are checked in detail; any other op
is reported ("no rule here"), so the checker errs towards refusal. What it cannot
see: a device's own limits (texture sizes, OpenGL vs OpenCL backends) and
numerical differences; those need a device run.

>>> import tensorflow as tf
>>> fn = tf.function(lambda x: tf.squeeze(x, -1), input_signature=[tf.TensorSpec([1, 3, 1])])
>>> conv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
>>> violations(conv.convert())
[]
"""

from __future__ import annotations

import dataclasses

import numpy as np
from tensorflow.lite.python import schema_py_generated as schema

_OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
_TYPE_NAMES = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
FLOAT = ("FLOAT32", "FLOAT16")

# Builtin ops that NewOperationParser has a parser for (DEQUANTIZE and QUANTIZE
# only with quantized ops enabled; float16 weights' DEQUANTIZE is always taken).
SUPPORTED_OPS = frozenset(
    """ABS ADD ADD_N AVERAGE_POOL_2D BATCH_MATMUL CAST CONCATENATION CONV_2D COS CUMSUM
    DENSIFY DEPTHWISE_CONV_2D DEPTH_TO_SPACE DEQUANTIZE DIV EQUAL ELU EXP FLOOR FLOOR_DIV
    FLOOR_MOD FULLY_CONNECTED GATHER GELU GREATER GREATER_EQUAL HARD_SWISH LESS LESS_EQUAL
    LOGISTIC LOG LOGICAL_AND LSTM MAXIMUM MAX_POOL_2D MEAN MINIMUM MIRROR_PAD MUL NEG
    NOT_EQUAL ONE_HOT PACK PAD PADV2 POW REDUCE_MAX REDUCE_MIN REDUCE_PROD QUANTIZE RELU
    RELU6 RELU_0_TO_1 RELU_N1_TO_1 LEAKY_RELU PRELU RESHAPE RESIZE_BILINEAR
    RESIZE_NEAREST_NEIGHBOR RSQRT SELECT SELECT_V2 SIGN SIN SLICE SOFTMAX SPACE_TO_DEPTH
    SPLIT SPLIT_V SQRT SQUARE SQUARED_DIFFERENCE STRIDED_SLICE SUB SUM TANH TILE TRANSPOSE
    TRANSPOSE_CONV UNPACK""".split()
)
_COMPARISONS = frozenset("GREATER GREATER_EQUAL LESS LESS_EQUAL EQUAL NOT_EQUAL".split())
_UNARY = frozenset(
    "ABS COS ELU EXP FLOOR GELU LOG LOGISTIC NEG RSQRT SIGN SIN SQRT SQUARE TANH".split()
)
_BINARY = _COMPARISONS | frozenset(
    "DIV FLOOR_DIV FLOOR_MOD LOGICAL_AND MAXIMUM MINIMUM POW SQUARED_DIFFERENCE SUB".split()
)
_WEIGHTED = frozenset(("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "BATCH_MATMUL"))


@dataclasses.dataclass(frozen=True)
class Tensor:
    """What the rules read of one tensor: type name, shape, whether it is a constant, the
    op that produces it (None for inputs and constants) and how many ops read it."""

    type: str
    shape: tuple[int, ...]
    const: bool
    producer: str | None = None
    consumers: int = 0


@dataclasses.dataclass(frozen=True)
class Op:
    """One operator: its builtin name, input and output tensors (None: optional, absent)
    and builtin options (the schema's object, or None)."""

    index: int
    name: str
    inputs: tuple[Tensor | None, ...]
    outputs: tuple[Tensor, ...]
    options: object


def ops(flatbuffer: bytes) -> list[Op]:
    """The operators of the first subgraph, in execution order."""
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(flatbuffer, 0))
    graph = model.subgraphs[0]

    def name_of(op) -> str:
        code = model.operatorCodes[op.opcodeIndex]
        return _OP_NAMES[max(code.builtinCode, code.deprecatedBuiltinCode)]

    producers, consumers = {}, {}
    for op in graph.operators:
        for i in op.outputs if op.outputs is not None else ():
            producers[int(i)] = name_of(op)
        for i in op.inputs if op.inputs is not None else ():
            consumers[int(i)] = consumers.get(int(i), 0) + 1

    def tensor(i: int) -> Tensor | None:
        if i < 0:
            return None
        t = graph.tensors[i]
        data = model.buffers[t.buffer].data
        shape = tuple(int(d) for d in (t.shape if t.shape is not None else ()))
        const = data is not None and len(data) > 0
        return Tensor(
            _TYPE_NAMES[t.type], shape, const, producers.get(int(i)), consumers.get(int(i), 0)
        )

    # The delegate's FP16GraphPartitionHelper reads float16 weights through their
    # DEQUANTIZE: consumers see those outputs as (float16) constants.
    fp16_weights = {}
    for op in graph.operators:
        if name_of(op) == "DEQUANTIZE" and _is_const(tensor(op.inputs[0]), "FLOAT16"):
            fp16_weights[int(op.outputs[0])] = tensor(op.inputs[0])
    out = []
    for index, op in enumerate(graph.operators):
        ins = op.inputs if op.inputs is not None else ()
        inputs = tuple(fp16_weights.get(int(i)) or tensor(i) for i in ins)
        outputs = tuple(tensor(i) for i in (op.outputs if op.outputs is not None else ()))
        out.append(Op(index, name_of(op), inputs, outputs, op.builtinOptions))
    return out


def violations(flatbuffer: bytes, allow_quant_ops: bool = False) -> list[str]:
    """Every rule an op of `flatbuffer` breaks, as "Op#i NAME: reason"; [] when none."""
    found = []
    for op in ops(flatbuffer):
        found += [f"Op#{op.index} {op.name}: {why}" for why in op_violations(op, allow_quant_ops)]
    return found


def op_violations(op: Op, allow_quant_ops: bool = False) -> list[str]:
    """The reasons the delegate would leave `op` on the CPU (module docstring)."""
    if op.name not in SUPPORTED_OPS:
        return ["not an op the GPU delegate has a parser for"]
    fp16_weights = op.name == "DEQUANTIZE" and _is_const(op.inputs[0], "FLOAT16")
    if op.name in ("DEQUANTIZE", "QUANTIZE") and not (allow_quant_ops or fp16_weights):
        return ["runs on the GPU only with quantized ops enabled"]
    reasons = _tensor_violations(op, allow_quant_ops) if not fp16_weights else []
    rule = _RULES.get(op.name)
    if rule is None and op.name not in _UNARY | _BINARY:
        reasons.append("no rule here for this op (checker is conservative)")
    elif rule is not None:
        reasons += rule(op)
    elif op.name in _UNARY:
        reasons += _runtime_consts(op, [(1, 0)])
    else:
        reasons += _runtime_consts(op, [(2, 0), (1, 1)])
    if op.name in _WEIGHTED:
        weights = [t for t in op.inputs[1:] if t is not None and t.const]
        bad = [t.type for t in weights if t.type not in FLOAT + ("INT32",)]
        if bad:
            reasons.append(f"constant weights of type {bad}: the parsers read float32/float16")
    return reasons


def _tensor_violations(op: Op, allow_quant_ops: bool) -> list[str]:
    """`IsAllAllowedTensors`: types of the non-constant tensors, ranks below 5."""
    allowed_in, allowed_out = set(FLOAT), set(FLOAT)
    if allow_quant_ops:
        allowed_in |= {"INT8", "UINT8"}
        allowed_out |= {"INT8", "UINT8"}
    if op.name in _COMPARISONS:
        allowed_out.add("BOOL")
    if op.name == "CAST":
        allowed_in |= {"BOOL", "INT32"}
        allowed_out |= {"INT32", "BOOL"}
    if op.name in ("ONE_HOT", "GATHER"):
        allowed_in.add("INT32")
    if op.name in ("SELECT", "SELECT_V2"):
        allowed_in.add("BOOL")
    if op.name == "LOGICAL_AND":
        allowed_in.add("BOOL")
        allowed_out.add("BOOL")
    reasons = []
    for kind, tensors, allowed in (
        ("input", op.inputs, allowed_in),
        ("output", op.outputs, allowed_out),
    ):
        for i, t in enumerate(tensors):
            if t is None:
                continue
            if len(t.shape) >= 5:
                reasons.append(f"{kind} {i} has rank {len(t.shape)} (at most 4)")
            if not t.const and t.type not in allowed:
                reasons.append(f"non-constant {kind} {i} is {t.type} (allowed: {sorted(allowed)})")
    return reasons


def _is_const(t: Tensor | None, type_name: str | None = None) -> bool:
    return t is not None and t.const and (type_name is None or t.type == type_name)


def _runtime_consts(op: Op, allowed: list[tuple[int, int]]) -> list[str]:
    """The op's (runtime, constant) input counts must be one of `allowed`."""
    present = [t for t in op.inputs if t is not None]
    counts = (sum(not t.const for t in present), sum(t.const for t in present))
    if counts not in allowed:
        return [f"{counts[0]} runtime and {counts[1]} constant inputs (needs one of {allowed})"]
    return []


def _runtime(op: Op) -> list[Tensor]:
    return [t for t in op.inputs if t is not None and not t.const]


def _add(op: Op) -> list[str]:
    return [] if len(op.inputs) == 2 else ["ADD needs two inputs"]


def _mul(op: Op) -> list[str]:
    if len(op.inputs) != 2:
        return ["MUL needs two inputs"]
    a, b = op.inputs[0].shape, op.inputs[1].shape
    if len(a) == len(b) and len(a) > 0:
        a_smaller = any(x < y for x, y in zip(a, b, strict=True))
        b_smaller = any(y < x for x, y in zip(a, b, strict=True))
        if a_smaller and b_smaller:  # an outer product: neither input covers the other
            return [f"MUL of {list(a)} and {list(b)}: neither is at least the other everywhere"]
    return []


def _fully_connected(op: Op) -> list[str]:
    o = op.options
    reasons = []
    if o is not None and o.weightsFormat != schema.FullyConnectedOptionsWeightsFormat.DEFAULT:
        reasons.append("weights format is not DEFAULT")
    if len(_runtime(op)) > 2:
        reasons.append("more than 2 runtime inputs")
    if op.inputs[0].const:
        reasons.append("constant first input")
    if o is not None and o.keepNumDims and len(op.inputs[0].shape) != len(op.outputs[0].shape):
        reasons.append("keep_num_dims with input and output of different ranks")
    return reasons


def _batch_matmul(op: Op) -> list[str]:
    if len(op.inputs) != 2 or len(op.outputs) != 1:
        return ["BATCH_MATMUL needs 2 inputs and 1 output"]
    runtime = len(_runtime(op))
    if runtime == 2 or (runtime == 1 and _is_const(op.inputs[1]) and len(op.inputs[1].shape) == 2):
        return []
    return ["BATCH_MATMUL needs 2 runtime inputs, or a 2-D constant second input"]


def _reshape(op: Op) -> list[str]:
    return _runtime_consts(op, [(1, 0), (1, 1)]) + (
        [] if len(op.outputs) == 1 else ["RESHAPE needs one output"]
    )


def _softmax(op: Op) -> list[str]:
    return [] if op.options is None or op.options.beta == 1 else ["softmax beta != 1"]


def _strided_slice(op: Op) -> list[str]:
    o, reasons = op.options, []
    for mask in ("ellipsisMask", "newAxisMask", "shrinkAxisMask"):
        if o is not None and getattr(o, mask):
            reasons.append(f"{mask} is set (the delegate has none)")
    if len(op.inputs) < 4:
        reasons.append("needs 4 inputs")
    if len(op.inputs[0].shape) not in (3, 4):
        reasons.append(f"input of rank {len(op.inputs[0].shape)} (3 or 4 only)")
    return reasons


def _select(op: Op) -> list[str]:
    if len(op.inputs) != 3 or len(op.outputs) != 1:
        return ["needs 3 inputs and 1 output"]
    cond, a, b = op.inputs
    out, reasons = op.outputs[0].shape, []
    if cond.type not in ("BOOL",) + FLOAT or a.type not in FLOAT or b.type not in FLOAT:
        reasons.append(
            f"types {cond.type}, {a.type}, {b.type} (bool/float condition, float values)"
        )
    for name, t in (("if", a), ("else", b)):
        scalar = len(t.shape) == 0 or (len(t.shape) == 1 and t.shape[0] <= 1)
        if t.shape != out and not scalar:
            reasons.append(
                f"{name} value {list(t.shape)} neither the output's {list(out)} nor a scalar"
            )
        if t.const and len(t.shape) == 2:
            reasons.append(f"2-D constant {name} value")
    return reasons


def _one_hot(op: Op) -> list[str]:
    indices, _, on, off = op.inputs
    reasons = []
    if indices.type != "INT32":
        reasons.append(f"indices are {indices.type} (int32 only)")
    axis = op.options.axis if op.options is not None else -1
    if axis not in (-1, indices.shape[-1] if indices.shape else -1):
        reasons.append(f"axis {axis} (-1 only)")
    if any(d != 1 for d in indices.shape[int(len(indices.shape) > 3) : -1]):
        reasons.append(f"indices {list(indices.shape)}: non-singleton inner dimensions")
    for name, t in (("on", on), ("off", off)):
        if t.type != "FLOAT32" or not t.const or len(t.shape) > 1 or (t.shape and t.shape[0] > 1):
            reasons.append(
                f"{name} value must be a constant float32 scalar, got {t.type}{list(t.shape)}"
            )
    return reasons


def _gather(op: Op) -> list[str]:
    reasons = _runtime_consts(op, [(2, 0), (1, 1)])
    params, indices = op.inputs[:2]
    if params.type == "INT32":
        reasons.append("int32 params")
    if len(indices.shape) != 1 or indices.type != "INT32":
        reasons.append(f"indices {indices.type}{list(indices.shape)} (1-D int32 only)")
    return reasons


def _cast(op: Op) -> list[str]:
    src, dst = op.inputs[0].type, op.outputs[0].type
    if src == "BOOL" and dst in FLOAT:  # CastOperationParser: comparison -> CAST -> one op
        source, out = op.inputs[0], op.outputs[0]
        if source.producer is None or source.consumers != 1:
            return ["bool input not made by one op for this CAST alone"]
        if out.consumers != 1:
            return [f"cast from bool read by {out.consumers} ops (or a graph output): one only"]
    ok = (
        (src == "BOOL" and dst in FLOAT)
        or (src in FLOAT and dst == "BOOL")
        or (src in ("FLOAT32", "INT32") and dst in ("FLOAT32", "INT32"))
    )
    return _runtime_consts(op, [(1, 0)]) + ([] if ok else [f"cast {src} -> {dst}"])


def _reduce(op: Op) -> list[str]:
    axes = op.inputs[1]
    ok = axes is not None and axes.const and axes.type == "INT32"
    return _runtime_consts(op, [(1, 1)]) + ([] if ok else ["axes must be a constant int32 tensor"])


def _dequantize(op: Op) -> list[str]:
    return ["int16 input"] if op.inputs[0].type == "INT16" else []


def _always(op: Op) -> list[str]:
    return []


_RULES = {
    "ADD": _add,
    "MUL": _mul,
    "FULLY_CONNECTED": _fully_connected,
    "BATCH_MATMUL": _batch_matmul,
    "RESHAPE": _reshape,
    "SOFTMAX": _softmax,
    "STRIDED_SLICE": _strided_slice,
    "SELECT": _select,
    "SELECT_V2": _select,
    "ONE_HOT": _one_hot,
    "GATHER": _gather,
    "CAST": _cast,
    "SUM": _reduce,
    "MEAN": _reduce,
    "REDUCE_MAX": _reduce,
    "REDUCE_MIN": _reduce,
    "REDUCE_PROD": _reduce,
    "DEQUANTIZE": _dequantize,
    "CONCATENATION": _always,
    "SPLIT": _always,
    "SPLIT_V": _always,
    "PACK": _always,
}


def op_counts(flatbuffer: bytes) -> dict[str, int]:
    """Builtin op name -> how many times it occurs, sorted by name."""
    names = [op.name for op in ops(flatbuffer)]
    return {n: names.count(n) for n in sorted(set(names))}


def shapes_are_static(flatbuffer: bytes) -> bool:
    """True when no tensor has an unknown (-1) dimension."""
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(flatbuffer, 0))
    graph = model.subgraphs[0]
    return all(
        t.shapeSignature is None or np.all(np.asarray(t.shapeSignature) >= 0) for t in graph.tensors
    )
