"""The ``kiln quantize`` command (registered on the main CLI group by ``kiln/cli.py``)."""
from __future__ import annotations

import click


def register(cli: click.Group) -> None:
    @cli.command("quantize", short_help="Post-training int8 quantization to a QDQ ONNX model.")
    @click.argument("model", metavar="MODEL")
    @click.option("--calibration", required=True, metavar="data.npz",
                  help="Calibration samples: one array per model input name (the input's shape, "
                       "or with a leading sample axis).")
    @click.option("-o", "--output", required=True, metavar="OUT.onnx", help="Where to write the QDQ model.")
    @click.option("--method", type=click.Choice(["minmax", "percentile"]), default="minmax", show_default=True,
                  help="Activation range calibration.")
    @click.option("--percentile", type=float, default=99.99, show_default=True,
                  help="Percentile for --method percentile.")
    @click.option("--activations", default="uint8", show_default=True, metavar="TYPE",
                  help="Activation type: uint8 or int8.")
    @click.option("--symmetric-activations", is_flag=True, help="Zero-centred activation ranges (zero point 0 / 128).")
    @click.option("--per-tensor", is_flag=True, help="One weight scale per tensor instead of per output channel.")
    @click.option("--skip", multiple=True, metavar="NAME|OP",
                  help="Node name or op type to keep in float (repeatable).")
    def quantize_cmd(model, calibration, output, method, percentile, activations, symmetric_activations,
                     per_tensor, skip):
        """Quantize MODEL (float ONNX) with calibration data; write a QDQ ONNX model that
        ONNX Runtime reads and `kiln compile` turns into int8 kernels."""
        from collections import Counter

        from kiln.quantization.ptq import quantize

        q = quantize(model, calibration, output, method=method, percentile=percentile,
                     activations=activations, symmetric_activations=symmetric_activations,
                     per_channel=not per_tensor, skip=skip)
        ops = Counter(n.op_type for n in q.graph.node)
        click.echo(f"quantized {model} -> {output}: {ops['QuantizeLinear']} QuantizeLinear, "
                   f"{ops['DequantizeLinear']} DequantizeLinear")
