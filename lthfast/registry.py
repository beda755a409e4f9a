"""Registries: name -> implementation, filled by decorators, so adding one is one file and one line.

Datasets, models, subset rules, scores and loaders are each a ``Registry``; the CLI takes its
choices from them, so a new entry needs no CLI change. A Registry is a dict (``in``, iteration
and ``[name]`` work as usual); ``lookup`` turns an unknown name into the one user-error line.

    python -c "from lthfast.data.streams import STREAMS; print(list(STREAMS))"
"""

from __future__ import annotations

from typing import Callable, Optional, TypeVar

from .errors import UserError

T = TypeVar("T")


class Registry(dict):
    def __init__(self, what: str, on_register: Optional[Callable[[str], None]] = None):
        super().__init__()
        self.what = what  # "dataset", "loader", ...: how error messages name an entry
        self.on_register = on_register  # told each new name (scores: the run store's kinds)

    def register(self, name: str) -> Callable[[T], T]:
        def decorate(obj: T) -> T:
            self[name] = obj
            if self.on_register is not None:
                self.on_register(name)
            return obj
        return decorate

    def lookup(self, name: str):
        if name not in self:
            raise UserError(f"unknown {self.what} '{name}' (known: {', '.join(self)})")
        return self[name]
