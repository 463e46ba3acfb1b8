"""``emq export-model``: an ``emq allocate`` result as a QDQ ONNX model and AIMET encodings.

A thin adapter: the work, and its checks, are ``emq.deploy.export_allocation_file``.
"""

from __future__ import annotations

import argparse

from emq.deploy import export_allocation_file


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    xm = subparsers.add_parser(
        "export-model",
        help="an emq allocate result as a QDQ ONNX model (and AIMET encodings)",
    )
    xm.add_argument("--allocation", required=True, metavar="ALLOC.json",
                    help="allocation JSON written by emq allocate")  # fmt: skip
    xm.add_argument("--out", metavar="PATH", help="ONNX model to write")
    xm.add_argument("--encodings", metavar="PATH",
                    help="AIMET encodings JSON (format 0.6.1) to write")  # fmt: skip
    xm.add_argument("--checkpoint", help="state_dict (default: the allocation's, else shipped)")
    return xm


def run(args: argparse.Namespace) -> None:
    exported = export_allocation_file(args.allocation, args.out, args.encodings, args.checkpoint)
    bits = [f"W{q.w_bits}A{q.a_bits}" for q in exported.quantizers]
    print(f"layers     {len(bits)}  ({', '.join(sorted(set(bits)))})")
    for kind, path in (("onnx", args.out), ("encodings", args.encodings)):
        if path is not None:
            print(f"{kind:<10} {path}")
