"""pgsync-rs plugin host, embedded in the pgsync binary.

Provides PGSync's plugin API (``pgsync.plugin.Plugin``) so that plugin files written for PGSync
import it unchanged, loads the plugin classes of the package ``plugins`` the way PGSync 7.3 does,
and applies them to batches of documents for the Rust side. See README.md, "Plugins".
"""

import abc
import datetime
import decimal
import importlib
import importlib.machinery
import importlib.util
import inspect
import json
import os
import pkgutil
import sys
import traceback
import types
import uuid

PACKAGE = "plugins"


class Plugin(abc.ABC):
    """Base class of a PGSync plugin.

    A subclass sets the class attribute ``name`` (what schema.json's ``plugins`` lists) and
    implements ``transform(doc, **kwargs)``; kwargs holds ``_id`` and ``_index``.
    """

    @abc.abstractmethod
    def transform(self, doc, **kwargs):
        """Returns the document to index, or a falsy value to skip it."""


Plugin.__module__ = "pgsync.plugin"


class LoadError(Exception):
    """A start-up failure; its message names the file, the plugins and the traceback."""


def install_api():
    """Registers the modules ``pgsync`` and ``pgsync.plugin`` (only the plugin API)."""
    if getattr(sys.modules.get("pgsync.plugin"), "Plugin", None) is Plugin:
        return
    api = types.ModuleType("pgsync.plugin", "PGSync's plugin API, provided by pgsync-rs.")
    api.Plugin = Plugin
    package = types.ModuleType("pgsync", "PGSync's plugin API, provided by pgsync-rs.")
    package.__path__ = []
    package.plugin = api
    sys.modules["pgsync"] = package
    sys.modules["pgsync.plugin"] = api


# Plugin classes found, per package directory (None: the package found on sys.path).
_classes = {}


def _forget_package():
    for name in list(sys.modules):
        if name == PACKAGE or name.startswith(PACKAGE + "."):
            del sys.modules[name]


def _import_package(directory):
    """Imports ``directory`` as the package ``plugins``, or ``plugins`` from sys.path."""
    _forget_package()
    importlib.invalidate_caches()
    if directory is None:
        try:
            return importlib.import_module(PACKAGE)
        except ModuleNotFoundError as e:
            if e.name == PACKAGE:
                raise
            raise LoadError(f"cannot import the package {PACKAGE}:\n{_plugin_traceback(e)}") from None
        except BaseException as e:
            raise LoadError(f"cannot import the package {PACKAGE}:\n{_plugin_traceback(e)}") from None
    init = os.path.join(directory, "__init__.py")
    if os.path.isfile(init):
        spec = importlib.util.spec_from_file_location(
            PACKAGE, init, submodule_search_locations=[directory]
        )
    else:
        spec = importlib.machinery.ModuleSpec(PACKAGE, None, is_package=True)
        spec.submodule_search_locations = [directory]
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    try:
        if spec.loader is not None:
            spec.loader.exec_module(module)
    except BaseException as e:
        del sys.modules[PACKAGE]
        raise LoadError(f"cannot import {init}:\n{_plugin_traceback(e)}") from None
    return module


def _plugin_traceback(e):
    """The traceback of ``e`` without the frames of this host and of importlib."""
    frames = [
        f
        for f in traceback.extract_tb(e.__traceback__)
        if not f.filename.startswith("<") and os.path.basename(os.path.dirname(f.filename)) != "importlib"
    ]
    head = ["Traceback (most recent call last):\n", *traceback.format_list(frames)] if frames else []
    return "".join(head + traceback.format_exception_only(type(e), e))


def _import(name, file):
    try:
        return importlib.import_module(name)
    except BaseException as e:
        raise LoadError(f"cannot import module {name} ({file}):\n{_plugin_traceback(e)}") from None


def _walk(package_name, found, seen_paths):
    """PGSync's ``Plugins.walk``: every module of the package, then every sub-directory."""
    module = _import(package_name, os.path.join(*package_name.split(".")[1:], "__init__.py"))
    for info in pkgutil.iter_modules(module.__path__, prefix=package_name + "."):
        if info.ispkg:
            continue
        file = os.path.join(getattr(info.module_finder, "path", "?"), info.name.rsplit(".", 1)[-1] + ".py")
        for _, klass in inspect.getmembers(_import(info.name, file), inspect.isclass):
            if issubclass(klass, Plugin) and klass is not Plugin and klass not in found:
                found.append(klass)
    for path in list(module.__path__):
        if path in seen_paths:
            continue
        seen_paths.add(path)
        for entry in sorted(os.listdir(path)):
            if entry.isidentifier() and entry != "__pycache__" and os.path.isdir(os.path.join(path, entry)):
                _walk(f"{package_name}.{entry}", found, seen_paths)


def plugin_classes(directory):
    """Every Plugin subclass in the package, in discovery order, each class once."""
    if directory not in _classes:
        install_api()
        package = _import_package(directory)
        found = []
        _walk(package.__name__, found, set())
        _classes[directory] = found
    return _classes[directory]


def _where(klass):
    try:
        return inspect.getsourcefile(klass) or klass.__module__
    except TypeError:
        return klass.__module__


def load(directory, names):
    """A Chain of the plugins ``names``, in that order (PGSync sorts by the schema's list)."""
    try:
        classes = plugin_classes(directory)
    except ModuleNotFoundError as e:
        if e.name != PACKAGE:
            raise
        raise LoadError(f"No module named 'plugins' on sys.path {sys.path}") from None
    wanted = [k for k in classes if getattr(k, "name", None) in names]
    present = {k.name for k in wanted}
    missing = [n for n in names if n not in present]
    if missing:
        known = sorted({str(getattr(k, "name", None)) for k in classes})
        raise LoadError(
            f"no plugin class named {', '.join(map(repr, missing))}: a subclass of "
            f"pgsync.plugin.Plugin with that `name` must be defined in a module of the package; "
            f"plugin names found: {', '.join(known) or 'none'}"
        )
    wanted.sort(key=lambda k: names.index(k.name))
    plugins = []
    for klass in wanted:
        try:
            plugins.append(klass())
        except BaseException as e:
            raise LoadError(
                f"plugin {klass.name} ({klass.__qualname__} in {_where(klass)}): cannot create "
                f"it:\n{_plugin_traceback(e)}"
            ) from None
    return Chain(plugins)


def _json_default(value):
    """What opensearch-py's serializer does for values json cannot encode."""
    if isinstance(value, (datetime.date, datetime.datetime, datetime.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _dumps(doc):
    return json.dumps(
        doc, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_json_default
    )


class Chain:
    """The plugins of one schema entry, in application order."""

    def __init__(self, plugins):
        self.plugins = plugins

    def names(self):
        """The plugins' names in application order."""
        return [p.name for p in self.plugins]

    def apply(self, index, docs):
        """Per (id, JSON bytes) pair: a str (the JSON to index), None (dropped by a plugin) or a
        1-tuple holding the failure's text (traceback included)."""
        return [self._one(index, _id, source) for _id, source in docs]

    def _one(self, index, _id, source):
        step = "decoding the document"
        try:
            doc = json.loads(source)
            for plugin in self.plugins:
                step = f"plugin {plugin.name}"
                doc = plugin.transform(doc, _id=_id, _index=index)
                if not doc:
                    return None
            if not isinstance(doc, dict):
                return (f"{step} returned {type(doc).__name__}, expected a dict (the _source)",)
            step = f"encoding the document {step} returned as JSON"
            return _dumps(doc)
        except BaseException as e:
            return (f"{step} failed:\n{_plugin_traceback(e)}",)


def auth(directory, keys):
    """PGSync's ``Plugins("plugins", ["Auth"]).auth(key)`` for each key. Returns the values the
    first ``Auth`` plugin with an ``auth`` method gave (falsy ones left out), and per failed key
    the exception's type name only: its message may hold the secret."""
    try:
        classes = plugin_classes(directory)
    except ModuleNotFoundError as e:
        if e.name == PACKAGE:
            return {}, {}
        raise
    provider = None
    for klass in classes:
        if getattr(klass, "name", None) == "Auth" and hasattr(klass, "auth"):
            try:
                provider = klass()
            except BaseException as e:
                raise LoadError(
                    f"plugin Auth ({klass.__qualname__} in {_where(klass)}): cannot create "
                    f"it:\n{_plugin_traceback(e)}"
                ) from None
            break
    values, failures = {}, {}
    for key in keys if provider else []:
        try:
            value = provider.auth(key)
        except Exception as e:
            failures[key] = type(e).__name__
            continue
        if value:
            values[key] = str(value)
    return values, failures
