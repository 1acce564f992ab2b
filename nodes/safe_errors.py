"""Every error a pack node shows is safe to log, whatever text reached it.

The pack's own messages quote outside text with ``safe_text.quoted``; this guard also covers
messages built elsewhere (torch, safetensors, the OS) from a file name or a phrase. ComfyUI's
log stream dies on a lone surrogate and takes the prompt worker with it.
"""

from __future__ import annotations

import functools
import inspect
import sys

from ..models.safe_text import is_loggable, loggable

GUARDED_METHODS = ("execute", "validate_inputs")
SHORT_MODULE = "multisubject"  # ComfyUI shows an error's type as module + class name: this instead of the pack's path
PACK_PACKAGE = __package__.rpartition(".")[0]  # the pack's package, whatever folder it was installed under


def _safe_exception(error: Exception) -> Exception:
    """The same exception type with its message made loggable (escaped, shortened); the type's name stays either way."""
    message = loggable(str(error))
    try:
        safe = type(error)(message)
    except Exception:  # an exception type with another constructor
        safe = None
    if safe is not None and str(safe) == message:  # a shortened message is loggable too: only its length exceeds the limit
        return safe
    return RuntimeError(f"{type(error).__name__}: {message}")


def _guard(method):
    @functools.wraps(method)
    def guarded(cls, *args, **kwargs):
        try:
            result = method(cls, *args, **kwargs)
        except Exception as error:
            if is_loggable(str(error)):
                raise
            raise _safe_exception(error) from None  # the original message is what must not reach the log
        return loggable(result) if isinstance(result, str) else result  # validate_inputs' message

    guarded.__signature__ = inspect.signature(method)  # ComfyUI reads validate_inputs' argument names
    return guarded


def loggable_errors(node_class: type) -> type:
    """``node_class`` with its execute/validate_inputs errors and messages made loggable."""
    for name in GUARDED_METHODS:
        if name in node_class.__dict__:
            setattr(node_class, name, classmethod(_guard(node_class.__dict__[name].__func__)))
    return node_class


def short_exception_names() -> None:
    """Name the pack's exception classes ``multisubject.<Class>`` where ComfyUI shows an error's type.

    ComfyUI prints ``klass.__module__ + "." + klass.__qualname__``; under custom_nodes the module
    is the pack's file path turned package (``.../custom_nodes/comfyui-multisubject.attention_patches...``).
    Called once the pack's modules are imported; the classes themselves stay the same objects.
    """
    for name, module in list(sys.modules.items()):
        if module is None or not (name == PACK_PACKAGE or name.startswith(PACK_PACKAGE + ".")):
            continue
        for value in list(vars(module).values()):
            if isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == name:
                value.__module__ = SHORT_MODULE
