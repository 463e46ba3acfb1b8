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

from torch import nn

from benchmark.convert import make_quantizable
from benchmark.models import MODELS, load_model, load_state

_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_ATTR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
FACTORY_HELP = (
    "a model factory is module.path:name, a Python function or torch.nn.Module subclass "
    "that takes no arguments and returns a torch.nn.Module"
)


def build_model(spec: str, checkpoint: Path | str | None = None) -> nn.Module:
    """A zoo model by name (its shipped or given checkpoint), or ``module.path:factory``.

    A user model's ``checkpoint`` (a state_dict) is loaded with ``weights_only=True``; then
    its ``nn.MultiheadAttention`` layers are rewritten with ``nn.Linear`` projections
    (``benchmark.convert``). In eval mode.
    """
    if spec in MODELS:
        return load_model(spec, checkpoint)
    model = initial_model(spec)
    if checkpoint is not None:
        load_state(model, checkpoint)
    return make_quantizable(model.eval()).eval()


def initial_model(spec: str) -> nn.Module:
    """A model with its initial weights, as training starts from it: a zoo model's untrained
    network, or what ``module.path:factory`` (called with no arguments) returns.

    The factory is checked before it is called (a Python function, ``functools.partial`` or
    ``nn.Module`` subclass whose signature takes no arguments: not a builtin such as
    ``os:system``), and what it returns must be an ``nn.Module``; anything it raises,
    ``SystemExit`` included, is one clear error.
    """
    if spec in MODELS:
        return MODELS[spec]()
    module_name, colon, attr = spec.partition(":")
    if not colon or not _MODULE.match(module_name) or not _ATTR.match(attr):
        shown = spec if len(spec) <= 80 else spec[:77] + "..."
        raise ValueError(
            f"--model {shown!r} is neither a zoo model ({', '.join(sorted(MODELS))}) "
            "nor an import path of the form module.path:factory"
        )
    try:
        module = _import(module_name)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - any import failure (even exit) is the user's
        raise ValueError(
            f"--model {spec}: cannot import module {module_name!r} ({type(exc).__name__}: "
            f"{exc}); run from the folder that holds it, or add that folder to PYTHONPATH"
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
    return model


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
