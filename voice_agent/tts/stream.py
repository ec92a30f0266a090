"""Streaming a Piper (VITS) voice: the first audio of a sentence before all of it is made.

A Piper voice is one ONNX graph: text encoder, duration predictor and flow (the *front*)
turn phoneme ids into a latent ``z`` of one frame per 256 samples, then a HiFi-GAN
*decoder* turns ``z`` into the waveform. Piper runs the whole graph per sentence, so the
first sample of a sentence waits for all of it (about 0.12 s per second of speech on a
2-core CPU: 0.8 s for a 25-word sentence). The decoder is two thirds of that time and is
convolutional, so it can run on windows of ``z``: with enough frames of context on each
side a window's samples match the whole decode (10 frames: identical to float precision
on the embedded voice). The front runs whole (it is small), then the decoder runs a short
first window (first audio after the front plus about 30 ms) and then longer ones.

:func:`split_voice` cuts the graph at the decoder's input; a voice exported differently
(no such tensor) is reported as not splittable and spoken the old way, a sentence at a time.
:func:`decode_windows` is the pure window plan, tested without a model.
"""

from __future__ import annotations

from dataclasses import dataclass

DECODER_INPUT = "/Mul_7_output_0"
"""``z * mask``, the flow's output: what the decoder reads (Piper's VITS export)."""
DECODER_OUTPUT = "/dec/Tanh_output_0"
DECODER_PREFIX = "/dec/"
FRONT_END_NODE = "/Unsqueeze_11"
"""Reshapes the decoder's output into the graph output: dropped from the front."""


@dataclass(frozen=True)
class Window:
    """Decode frames ``[lo, hi)`` of ``z``; keep output frames ``[keep_from, keep_to)``
    (absolute frame numbers: the rest is context)."""

    lo: int
    hi: int
    keep_from: int
    keep_to: int


def decode_windows(frames: int, *, first: int, largest: int, context: int,
                   growth: int = 2) -> list[Window]:
    """Cover ``frames`` frames with windows, each kept part ``first`` frames for the first
    and ``growth`` times the one before up to ``largest``, with ``context`` frames of context
    on each side (clipped at the ends, where the whole decode pads with zeros too). Kept
    parts are in order, do not overlap and cover every frame once."""
    if first < 1 or largest < first or context < 0 or growth < 1:
        raise ValueError("windows need 1 <= first <= largest, context >= 0, growth >= 1")
    windows: list[Window] = []
    start, size = 0, first
    while start < frames:
        end = min(frames, start + size)
        windows.append(Window(max(0, start - context), min(frames, end + context), start, end))
        start, size = end, min(largest, size * growth)
    return windows


@dataclass(frozen=True)
class SplitVoice:
    """The two halves of a voice graph, serialized for ``onnxruntime.InferenceSession``."""

    front: bytes
    decoder: bytes


def split_voice(model_path: str) -> SplitVoice | None:
    """Cut a Piper voice's graph at the decoder input; None when it is not laid out like
    Piper's VITS export (the caller then synthesizes whole sentences)."""
    import onnx
    from onnx import helper

    model = onnx.load(model_path)
    graph = model.graph
    decoder_nodes = [n for n in graph.node if n.name.startswith(DECODER_PREFIX)]
    produced = {out for node in graph.node for out in node.output}
    decoder_produced = {out for node in decoder_nodes for out in node.output}
    initializers = {tensor.name for tensor in graph.initializer}
    decoder_reads = {name for node in decoder_nodes for name in node.input
                     if name and name not in decoder_produced and name not in initializers}
    if (decoder_reads != {DECODER_INPUT} or DECODER_OUTPUT not in decoder_produced
            or DECODER_INPUT not in produced):
        return None
    front_nodes = [n for n in graph.node
                   if not n.name.startswith(DECODER_PREFIX) and n.name != FRONT_END_NODE]
    z = helper.make_tensor_value_info(DECODER_INPUT, onnx.TensorProto.FLOAT, [1, None, None])
    audio = helper.make_tensor_value_info(DECODER_OUTPUT, onnx.TensorProto.FLOAT,
                                          [1, 1, None])

    def part(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto],
             output: onnx.ValueInfoProto) -> bytes:
        reads = {name for node in nodes for name in node.input}
        weights = [t for t in graph.initializer if t.name in reads]
        sub = helper.make_model(helper.make_graph(nodes, graph.name, inputs, [output], weights),
                                opset_imports=model.opset_import)
        sub.ir_version = model.ir_version
        return bytes(sub.SerializeToString())

    return SplitVoice(front=part(front_nodes, list(graph.input), z),
                      decoder=part(decoder_nodes, [z], audio))
