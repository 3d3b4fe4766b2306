"""Source kinds by name: spec class + factory, and the discriminated union of specs.

Each kind's module ends with one line, ``register(TheSpec, open_the_source)``;
a new kind is one module plus that line. :func:`parse_spec` validates a dict
against the union of every registered spec, discriminated on ``kind``.

Where kinds come from (all imported on first use of the registry):

* the kinds shipped with the library: their module names in :data:`BUILTIN`;
* plug-in kinds of other packages, with no edit to this library: a package
  declares an entry point in the group :data:`ENTRY_POINT_GROUP`
  (``vmr.sources``) whose value is the module to import, e.g. in its
  ``pyproject.toml``::

      [project.entry-points."vmr.sources"]
      toy = "toy_camera.source"

  Importing that module runs its ``register(...)`` line. The entry point's
  name is only a label (the kind's name is the spec's ``kind`` literal). A
  plug-in that fails to import is logged and skipped, like a built-in kind
  whose optional dependency is missing: the other kinds stay usable;
* anything that calls :func:`register` itself (tests, applications).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter

from streams.errors import SourceUnavailableError
from streams.source import Source, SourceSpec

log = logging.getLogger(__name__)

HUB_WHIP = "whip-ingest"
"""Name in :attr:`OpenContext.hubs` of the shared :class:`~streams.whip.WhipIngest`."""

BUILTIN = ("streams.file", "streams.rtsp", "streams.segments", "streams.whip")
"""Modules of the kinds shipped with the library (imported on first use)."""

ENTRY_POINT_GROUP = "vmr.sources"
"""Entry-point group of plug-in kinds: each entry's value names a module to import."""


@dataclass(frozen=True)
class OpenContext:
    """What a factory needs besides the spec.

    ``fps``: sampling rate when the spec has none. ``short_side``: pixels of
    a frame's short side. ``queue_size``: items buffered between the
    producer and the consumer. ``resume_token``: a token from an earlier
    source of the same spec (:meth:`Source.resume_token`). ``resume_at``:
    the source's own second up to which everything is stored (used when there
    is no token). ``hubs``: shared services by name (:data:`HUB_WHIP`: the
    :class:`~streams.whip.WhipIngest`). ``retries``: failed connection
    attempts in a row a reconnecting source makes before it gives up
    (None: forever).
    """

    fps: float = 2.0
    short_side: int = 224
    queue_size: int = 8
    resume_token: dict[str, Any] | None = None
    resume_at: float | None = None
    hubs: Mapping[str, object] = field(default_factory=dict)
    retries: int | None = None

    def fps_of(self, spec: SourceSpec) -> float:
        """The spec's rate, else the default."""
        return spec.fps or self.fps


Factory = Callable[[Any, OpenContext], Source]


@dataclass(frozen=True)
class Kind:
    """One registered kind."""

    name: str
    spec: type[SourceSpec]
    factory: Factory


_kinds: dict[str, Kind] = {}
_adapter: TypeAdapter[Any] | None = None
_lock = threading.Lock()
_builtins_loaded = False


def register(spec: type[SourceSpec], factory: Factory) -> None:
    """Register a kind: ``spec`` must declare ``kind: Literal["name"]``. Re-registering replaces."""
    global _adapter
    name = _kind_name(spec)
    with _lock:
        _kinds[name] = Kind(name, spec, factory)
        _adapter = None


def _kind_name(spec: type[SourceSpec]) -> str:
    fld = spec.model_fields.get("kind")
    args: tuple[object, ...] = tuple(getattr(fld.annotation, "__args__", ())) if fld is not None else ()
    name = args[0] if len(args) == 1 else None
    if not isinstance(name, str):
        raise TypeError(f"{spec.__name__}.kind must be Literal['<name>']")
    return name


def _load_builtins() -> None:
    """Import the built-in kind modules, then the plug-ins' (once per process)."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    for module in BUILTIN:
        try:
            importlib.import_module(module)
        except ImportError as exc:  # an optional dependency missing (aiortc for WHIP): that kind only
            log.warning("source kind module %s unavailable: %s", module, exc)
    for module in plugin_modules():
        try:
            importlib.import_module(module)
        except Exception as exc:  # someone else's package: one broken plug-in must not hide every kind
            log.warning("source kind plug-in %s unavailable: %s", module, exc)


def plugin_modules() -> list[str]:
    """Modules named by the installed ``vmr.sources`` entry points (see the module docstring)."""
    return [
        ep.value.split(":", 1)[0].strip() for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    ]


def kinds() -> dict[str, Kind]:
    """Every registered kind by name."""
    _load_builtins()
    return dict(_kinds)


def spec_adapter() -> TypeAdapter[Any]:
    """A validator for the union of every registered spec, discriminated on ``kind``."""
    global _adapter
    _load_builtins()
    with _lock:
        if _adapter is None:
            classes = tuple(k.spec for k in _kinds.values())
            if not classes:
                raise SourceUnavailableError("no source kind is registered")
            union: Any = Union[classes] if len(classes) > 1 else classes[0]  # noqa: UP007
            _adapter = TypeAdapter(Annotated[union, Field(discriminator="kind")])
        return _adapter


def parse_spec(data: Any) -> SourceSpec:
    """Validate ``data`` as the spec of its ``kind`` (pydantic ValidationError when invalid or unknown)."""
    spec: SourceSpec = spec_adapter().validate_python(data)
    return spec


def open_source(spec: SourceSpec, context: OpenContext) -> Source:
    """Build the source of ``spec``'s kind (typed StreamError when it cannot)."""
    kind = kinds().get(spec.kind)
    if kind is None or not isinstance(spec, kind.spec):
        raise SourceUnavailableError(f"no source kind {spec.kind!r} is registered")
    return kind.factory(spec, context)
