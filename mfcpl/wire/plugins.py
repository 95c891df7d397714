"""A registry of plug-in classes by name: the client-side algorithms and the server-side strategies use one each."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Generic, Protocol, TypeVar


class Named(Protocol):
    name: ClassVar[str]


T = TypeVar("T", bound=Named)


class Registry(Generic[T]):
    """Classes by the names they serve. ``load_builtins`` imports the modules that register the built-in ones, on
    first use, so a package's ``__init__`` does not import its plug-ins (which import the package)."""

    def __init__(self, kind: str, load_builtins: Callable[[], object]) -> None:
        self.kind = kind
        self._load_builtins = load_builtins
        self._classes: dict[str, type[T]] = {}

    def register(self, *names: str) -> Callable[[type[T]], type[T]]:
        """Class decorator: the class serves ``names``; its ``name`` becomes the first."""

        def decorate(cls: type[T]) -> type[T]:
            for name in names:
                if name in self._classes and self._classes[name] is not cls:
                    raise ValueError(f"{self.kind} {name!r} is registered twice "
                                     f"({self._classes[name].__name__}, {cls.__name__})")
                self._classes[name] = cls
            cls.name = names[0]
            return cls

        return decorate

    def get(self, name: str) -> type[T]:
        self._load_builtins()
        try:
            return self._classes[str(name)]
        except KeyError:
            raise ValueError(f"no {self.kind} {name!r}; known: {', '.join(sorted(self._classes))}") from None

    def all(self) -> dict[str, type[T]]:
        self._load_builtins()
        return dict(self._classes)
