"""A model by name: a zoo model, or a user's ``module.path:factory``.

``build_model`` is how every command that takes ``--model`` gets its network. A user's
factory module is imported the way ``python -m`` and ``uvicorn module:app`` find it: from
the installed packages, ``PYTHONPATH``, or the current folder. The model's checkpoint is
loaded, then the layers EMQ cannot quantize as they are (``nn.MultiheadAttention``) are
rewritten (``benchmark.convert``).
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from functools import partial
from pathlib import Path

import torch
from torch import nn

from benchmark.convert import make_quantizable
from benchmark.data import MEAN, STD
from benchmark.models import MODELS, evaluating, load_model, load_state

_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_ATTR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
FACTORY_HELP = (
    "a model factory is module.path:name, a Python function or torch.nn.Module subclass "
    "that takes no arguments and returns a torch.nn.Module"
)
NUM_CLASSES = 10  # Fashion-MNIST
PROBE_IMAGES = 2
MODEL_IO = (
    f"EMQ's models take normalized Fashion-MNIST images, a float32 tensor [N, 1, 28, 28], "
    f"and return one tensor of logits [N, {NUM_CLASSES}]"
)


def build_model(spec: str, checkpoint: Path | str | None = None) -> nn.Module:
    """A zoo model by name (its shipped or given checkpoint), or ``module.path:factory``.

    A user model's ``checkpoint`` (a state_dict) is loaded with ``weights_only=True``; then
    its ``nn.MultiheadAttention`` layers are rewritten with ``nn.Linear`` projections
    (``benchmark.convert``). In eval mode.
    """
    if spec in MODELS:
        return check_finite(load_model(spec, checkpoint), spec, checkpoint)
    model = initial_model(spec)
    if checkpoint is not None:
        check_finite(load_state(model, checkpoint), spec, checkpoint)
    model = make_quantizable(model.eval()).eval()
    _warn_hand_written_layers(model, spec)
    return model


def _warn_hand_written_layers(model: nn.Module, spec: str) -> None:
    """Say which weight matrices of the user's own modules (a conv written with F.conv2d
    and its own nn.Parameter) stay in float: EMQ quantizes nn.Conv2d / nn.Linear only."""
    found = [
        f"{name + '.' if name else ''}weight {list(m.weight.shape)} ({type(m).__name__})"
        for name, m in model.named_modules()
        if not isinstance(m, (nn.Conv2d, nn.Linear))
        and isinstance(m._parameters.get("weight"), nn.Parameter)
        and m.weight.ndim >= 2
        and not type(m).__module__.startswith("torch.nn")
    ]
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        print(
            f"emq: warning: --model {spec}: {found[0]}{more} is not an nn.Conv2d or nn.Linear "
            "weight: it stays full precision and is not counted in BOPs; write that layer as "
            "nn.Conv2d / nn.Linear to quantize it",
            file=sys.stderr,
        )


def initial_model(spec: str) -> nn.Module:
    """A model with its initial weights, as training starts from it: a zoo model's untrained
    network, or what ``module.path:factory`` (called with no arguments) returns.

    The factory is checked before it is called (a Python function, ``functools.partial`` or
    ``nn.Module`` subclass whose signature takes no arguments: not a builtin such as
    ``os:system``), and what it returns must be an ``nn.Module`` with finite parameters
    whose forward pass maps a few images ``[N, 1, 28, 28]`` to finite logits ``[N, 10]``
    (``check_forward``); anything it raises, ``SystemExit`` included, is one clear error.
    """
    if spec in MODELS:
        return MODELS[spec]()
    module_name, colon, attr = spec.partition(":")
    if not colon or not _MODULE.match(module_name) or not _ATTR.match(attr):
        shown = spec if len(spec) <= 80 else spec[:77] + "..."
        raise ValueError(
            f"--model {shown!r} is neither a zoo model ({', '.join(sorted(MODELS))}) "
            f"nor an import path of the form module.path:factory{_path_hint(module_name, attr)}"
        )
    try:
        module = _import(module_name)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - any import failure (even exit) is the user's
        hint = _path_hint(module_name, attr) or (
            "; run from the folder that holds it, or add that folder to PYTHONPATH"
        )
        raise ValueError(
            f"--model {spec}: cannot import module {module_name!r} ({type(exc).__name__}: "
            f"{exc}){hint}"
        ) from None
    factory = getattr(module, attr, None)
    if factory is None:
        raise ValueError(f"--model {spec}: module {module_name!r} has no {attr!r}")
    _check_factory(spec, factory)
    try:
        model = factory()
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - the factory is user code
        raise ValueError(
            f"--model {spec}: the factory raised {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"--model {spec} returned {type(model).__name__}, not a torch.nn.Module; "
            + FACTORY_HELP
        )
    return check_forward(check_finite(model, spec), spec)


def check_finite(model: nn.Module, spec: str, checkpoint: Path | str | None = None) -> nn.Module:
    """Refuse a model with a NaN or infinite parameter or buffer (it would score and measure
    as NaN, or as chance), naming the tensor."""
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point() and not _is_lazy(t) and not bool(torch.isfinite(t).all()):
            where = f"checkpoint {checkpoint}" if checkpoint is not None else f"--model {spec}"
            raise ValueError(
                f"{where}: tensor {name!r} holds NaN or infinite values; a model must have "
                "finite weights (train it again, e.g. with a lower --lr)"
            )
    return model


def check_forward(model: nn.Module, spec: str) -> nn.Module:
    """Run the model (eval mode, no gradients, the global RNG untouched) on a few seeded
    images of the input shape and refuse it, with what EMQ expects, unless its output is
    one finite floating-point tensor of logits ``[N, 10]``."""
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(PROBE_IMAGES, 1, 28, 28, generator=gen) - MEAN) / STD
    try:
        with torch.random.fork_rng(devices=[]), evaluating(model), torch.no_grad():
            out = model(x)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - the forward pass is user code
        msg = " ".join(str(exc).split())[:300]
        raise ValueError(
            f"--model {spec}: its forward pass on images [{PROBE_IMAGES}, 1, 28, 28] raised "
            f"{type(exc).__name__}: {msg}; {MODEL_IO}"
        ) from None
    if not isinstance(out, torch.Tensor):
        raise ValueError(
            f"--model {spec}: its forward pass returned {type(out).__name__}, not a tensor; "
            f"{MODEL_IO} (return the logits alone)"
        )
    if not out.is_floating_point() or tuple(out.shape) != (PROBE_IMAGES, NUM_CLASSES):
        raise ValueError(
            f"--model {spec}: its forward pass on images [{PROBE_IMAGES}, 1, 28, 28] returned "
            f"a {str(out.dtype).removeprefix('torch.')} tensor of shape {list(out.shape)}; "
            + MODEL_IO
        )
    if not bool(torch.isfinite(out).all()):
        raise ValueError(
            f"--model {spec}: its forward pass returned NaN or infinite logits; a model must "
            "compute finite logits from finite weights"
        )
    return model


def _is_lazy(t: torch.Tensor) -> bool:
    return isinstance(t, nn.parameter.UninitializedTensorMixin)


def _path_hint(module_name: str, attr: str) -> str:
    """For ``--model path/to/file.py:f``: how to name it instead."""
    if "/" in module_name or "\\" in module_name or module_name.endswith(".py"):
        stem = Path(module_name.replace("\\", "/").removesuffix(".py")).name
        return (
            f"; name a module as Python imports it, not as a file path: run from the folder "
            f"that holds {stem}.py and pass --model {stem}:{attr or 'FACTORY'}"
        )
    return ""


def _check_factory(spec: str, factory: object) -> None:
    """Refuse what is not a no-argument Python function or nn.Module class, uncalled."""
    is_module_class = inspect.isclass(factory) and issubclass(factory, nn.Module)
    if not (inspect.isfunction(factory) or is_module_class or isinstance(factory, partial)):
        kind = "class" if inspect.isclass(factory) else type(factory).__name__
        raise ValueError(f"--model {spec}: {kind} {spec.partition(':')[2]!r} is not a model "
                         f"factory; {FACTORY_HELP}")  # fmt: skip
    try:
        inspect.signature(factory).bind()
    except TypeError:
        raise ValueError(
            f"--model {spec}: {spec.partition(':')[2]}{inspect.signature(factory)} needs "
            f"arguments; {FACTORY_HELP}"
        ) from None
    except ValueError:  # no signature available
        raise ValueError(f"--model {spec}: cannot inspect the factory; {FACTORY_HELP}") from None


def is_zoo_model(spec: str) -> bool:
    """Whether ``spec`` names a zoo model (else it is a ``module.path:factory``)."""
    return spec in MODELS


def _import(module_name: str):
    """Import ``module_name``, the current folder searched as ``python -m`` does."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)  # after the installed packages: a local file shadows nothing
    return importlib.import_module(module_name)
