"""The backbone registry: one table of names across modalities, filled by plugins.

Plugins are found through the entry-point group ``finetune.backbones``. An entry point names a
:class:`BackbonePlugin` (or a zero-argument callable returning one). Loading is lazy (on the first
look-up) and isolated: a plugin that fails to import is recorded, warned about by name and shown by
``finetune plugins``; the others keep working. ``FINETUNE_STRICT_PLUGINS=1`` turns such a failure into
an exception. Two plugins registering the same name always raise, naming both.
"""
from __future__ import annotations

import contextlib
import fnmatch
import os
import signal
import threading
import warnings
from dataclasses import dataclass, field, replace
from importlib.metadata import entry_points
from typing import Any, Callable, Iterable, Iterator, Mapping

from .errors import DuplicateNameError, PluginError, UnknownModelError, did_you_mean
from .options import Option

ENTRY_POINT_GROUP = 'finetune.backbones'
#: the entry-point group of cross-encoders: models that score a (query, document) pair, listed under their own task
CROSS_ENCODER_GROUP = 'finetune.cross_encoders'
CROSS_ENCODER_TASK = 'cross-encoding'
#: the tasks of the core's own modalities; plugins add theirs (``BackbonePlugin.tasks``)
CORE_TASKS = ('text-to-text', 'image-to-image', 'text-to-image')
STRICT_ENV = 'FINETUNE_STRICT_PLUGINS'


@dataclass(frozen=True)
class BackboneSpec:
    """Everything the registry knows about one backbone, cheap to create: nothing is built or loaded.

    ``build(options)`` receives the validated ``model_options`` and returns a
    :class:`~finetune.backbone.Backbone`. ``dims(options)`` (optional) returns ``(own_dim, pooled_dim)``
    for those options without allocating weights; ``output_dim`` is the embedding size with the defaults.
    """

    name: str
    tasks: tuple[str, ...]
    modality: str
    architecture: str
    output_dim: int | None
    description: str
    build: Callable[[dict[str, Any]], Any] = field(repr=False, compare=False)
    dims: Callable[[dict[str, Any]], tuple[int, int]] | None = field(default=None, repr=False, compare=False)
    options: tuple[Option, ...] = ()
    preprocess_options: tuple[Option, ...] = ()
    defaults: Mapping[str, Any] = field(default_factory=dict)
    alias_of: str | None = None
    #: the tasks for which this is the model ``finetune fit`` trains when no model is named
    default_for: tuple[str, ...] = ()
    pooler_note: str = ''
    layout: str | None = None  # 'map' or 'tokens' when known without building
    plugin: str = ''

    def embedding_dim(self, options: Mapping[str, Any] | None = None) -> int | None:
        """The embedding size for validated `options` (defaults when None)."""
        options = dict(options or {})
        if options.get('output_dim'):
            return options['output_dim']
        pooler = options.get('pooler', self.defaults.get('pooler'))
        if self.dims is None:
            return self.output_dim
        own, pooled = self.dims(options)
        return own if pooler is None else pooled


@dataclass
class BackbonePlugin:
    """What an entry point of the group ``finetune.backbones`` provides.

    ``specs()`` lists the named backbones. A plugin may also own name prefixes (``'timm'`` makes every
    ``timm:<model>`` its own): ``resolve(prefix, rest)`` then returns a spec for such a name and
    ``list_prefixed(prefix, pattern)`` the names matching a wildcard pattern. ``prefix_tasks`` may give
    the tasks every name under a prefix serves, so that listing them by task resolves none of them.
    """

    name: str
    specs: Callable[[], Iterable[BackboneSpec]]
    prefixes: tuple[str, ...] = ()
    resolve: Callable[[str, str], BackboneSpec] | None = None
    list_prefixed: Callable[[str, str], list[str]] | None = None
    note: str = ''
    prefix_tasks: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: ``artifact_safe(prefix, rest)``: True when a prefixed name names a model of the library alone (no file,
    #: folder or hub id), so a saved model may rebuild from it; without it only ``./`` paths inside the
    #: artifact are accepted for the plugin's prefixes
    artifact_safe: Callable[[str, str], bool] | None = None
    #: tasks beyond the core's (``'mesh-to-mesh'``) that its models serve
    tasks: tuple[str, ...] = ()
    #: modalities beyond text and image (:class:`finetune.modalities.Modality`): extensions, recognisers
    modalities: tuple[Any, ...] = ()
    #: environment variables that, when set to a true value, mean 'no network' for this family's downloads
    offline_envs: tuple[str, ...] = ()
    #: export formats beyond the core's ONNX (:class:`ExportFormat`), by name
    export_formats: tuple[Any, ...] = ()


@dataclass(frozen=True)
class ExportFormat:
    """A folder format a plugin can write a model into (``finetune export --format NAME``).

    ``problem(model)``: why `model` cannot be written in this format (a sentence), or None.
    ``write(model, folder)``: write it into the existing, empty `folder`; returns figures or facts for the
    export's record (a dict). ``check(model, folder, trust_remote_code=False)``: ``encode(items, batch_size)``
    over the written folder as the format's own loader reads it (the parity gate compares its embeddings with
    the model's); None: the export cannot be checked, which its log line and model card then say.
    ``usage(folder)``: a Python snippet that loads it, for the model card. ``suffix``: the folder's default
    suffix beside the artifact (``'-st'``)."""

    name: str
    suffix: str
    problem: Callable[[Any], str | None]
    write: Callable[[Any, str], dict]
    check: Callable[..., Callable[[list, int], Any]] | None = None
    usage: Callable[[str], str] | None = None
    description: str = ''
    #: whether the format can hold a model cut to its leading dimensions (``export(..., dim=)``: the model handed to
    #: ``write`` then has ``truncate_dim`` set)
    takes_dim: bool = False


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded, and why."""

    name: str
    target: str
    error: str


class Registry:
    """Name -> :class:`BackboneSpec`, filled from entry points on first use.

    One registry per model type: the backbones (``finetune.backbones``) and the cross-encoders
    (``finetune.cross_encoders``) share this machinery; `kind` names the type in messages ('backbone'),
    `core_tasks` are the tasks it has before plugins add theirs."""

    def __init__(self, group: str = ENTRY_POINT_GROUP, kind: str = 'backbone',
                 core_tasks: tuple[str, ...] = CORE_TASKS):
        self.group = group
        self.kind = kind
        self.core_tasks = tuple(core_tasks)
        self._lock = threading.RLock()
        self._loaded = False  # set once every entry point has been tried
        self._loading = False  # set while the loading thread runs the entry points
        self._specs: dict[str, BackboneSpec] = {}
        self._plugins: dict[str, BackbonePlugin] = {}
        self._prefixes: dict[str, BackbonePlugin] = {}
        self._failures: list[PluginFailure] = []
        #: grows whenever the set of plugins changes, so that what is derived from them can be cached
        self.generation = 0

    # ------------------------------------------------------------------ loading
    def reload(self) -> None:
        """Forget everything and discover the entry points again (after installing a plugin)."""
        with self._lock:
            self._reset()
            self._ensure_loaded()

    def _reset(self) -> None:
        self.generation += 1
        self._loaded = False
        self._specs.clear()
        self._plugins.clear()
        self._prefixes.clear()
        self._failures.clear()

    def _ensure_loaded(self) -> None:
        """Load the entry points once. Other threads wait on the lock until loading is over; the loading
        thread itself (a plugin that looks models up while it loads) goes on with what is registered."""
        if self._loaded:
            return
        with self._lock:
            if self._loaded or self._loading:
                return
            self._loading = True
            try:
                with _watch_ctrl_c() as ctrl_c:
                    for ep in sorted(entry_points(group=self.group), key=lambda e: e.name):
                        self._load_entry_point(ep, ctrl_c)
                self._loaded = True
            except BaseException:
                self._reset()  # nothing half-loaded stays behind; the next look-up tries again
                raise
            finally:
                self._loading = False

    def _load_entry_point(self, ep, ctrl_c: list[bool]) -> None:
        """Load one entry point; any failure of the plugin (even SystemExit or a KeyboardInterrupt it raises
        itself) is recorded, only a real Ctrl-C (`ctrl_c[0]` set by the SIGINT handler) goes on up."""
        try:
            obj = ep.load()
            plugin = obj() if callable(obj) and not isinstance(obj, BackbonePlugin) else obj
            if not isinstance(plugin, BackbonePlugin):
                raise TypeError(f'entry point {ep.value!r} gave {type(plugin).__name__}, '
                                f'expected a finetune.registry.BackbonePlugin')
            self._add(plugin)
        except DuplicateNameError:
            raise
        except KeyboardInterrupt as exc:
            if ctrl_c[0]:
                raise
            self._record_failure(ep.name, ep.value, exc)
        except BaseException as exc:  # noqa: BLE001 - one plugin must not break the others
            self._record_failure(ep.name, ep.value, exc)

    def _record_failure(self, name: str, target: str, exc: BaseException) -> None:
        message = f'{type(exc).__name__}: {exc}'
        if os.environ.get(STRICT_ENV, '').strip() not in ('', '0', 'false', 'False'):
            raise PluginError(f'finetune plugin {name!r} ({target}) failed to load: {message}') from exc
        self._failures.append(PluginFailure(name, target, message))
        warnings.warn(f'finetune plugin {name!r} ({target}) failed to load and is skipped: {message}. '
                      f'Set {STRICT_ENV}=1 to make this an error.', RuntimeWarning, stacklevel=4)

    def add_plugin(self, plugin: BackbonePlugin) -> None:
        """Register a plugin object directly (what an entry point does, without packaging).

        Raises DuplicateNameError when it reuses a plugin name, a backbone name or a prefix."""
        self._ensure_loaded()
        self._add(plugin)

    def _add(self, plugin: BackbonePlugin) -> None:
        with self._lock:
            if plugin.name in self._plugins:
                raise DuplicateNameError(f'two plugins are called {plugin.name!r}')
            staged: dict[str, BackboneSpec] = {}
            for spec in plugin.specs():
                owner = self._specs.get(spec.name) or staged.get(spec.name)
                if owner is not None:
                    raise DuplicateNameError(
                        f'backbone name {spec.name!r} is registered by two plugins: '
                        f'{owner.plugin!r} and {plugin.name!r}. Uninstall one or rename the model.')
                staged[spec.name] = _with_plugin(spec, plugin.name)
            for prefix in plugin.prefixes:
                if prefix in self._prefixes:
                    raise DuplicateNameError(f'name prefix {prefix + ":"!r} is claimed by two plugins: '
                                             f'{self._prefixes[prefix].name!r} and {plugin.name!r}')
            self._specs.update(staged)
            for prefix in plugin.prefixes:
                self._prefixes[prefix] = plugin
            self._plugins[plugin.name] = plugin
            self.generation += 1

    # ------------------------------------------------------------------ queries
    def current_generation(self) -> int:
        """The plugins loaded, the :attr:`generation` of the set of them (a cache key for derived data)."""
        self._ensure_loaded()
        return self.generation

    @property
    def plugins(self) -> dict[str, BackbonePlugin]:
        self._ensure_loaded()
        return dict(self._plugins)

    @property
    def failures(self) -> list[PluginFailure]:
        self._ensure_loaded()
        return list(self._failures)

    def plugin_for_prefix(self, prefix: str) -> BackbonePlugin | None:
        """The plugin that owns the name prefix `prefix` (``'timm'`` for ``timm:<model>``), or None."""
        self._ensure_loaded()
        return self._prefixes.get(prefix)

    def is_named(self, name: str) -> bool:
        """True for a name a plugin lists (not one resolved through a prefix), case-insensitively."""
        self._ensure_loaded()
        return name in self._specs or name.lower() in {n.lower() for n in self._specs}

    def tasks(self) -> tuple[str, ...]:
        """Every task: the core's, then the ones plugins declare, in order."""
        self._ensure_loaded()
        extra = [t for plugin in self._plugins.values() for t in plugin.tasks]
        return tuple(dict.fromkeys((*self.core_tasks, *extra)))

    def export_formats(self) -> dict[str, ExportFormat]:
        """The export formats the plugins declare, by name (the first plugin to declare a name keeps it)."""
        found: dict[str, ExportFormat] = {}
        for plugin in self.plugins.values():
            for fmt in plugin.export_formats:
                found.setdefault(fmt.name, fmt)
        return found

    def default_model(self, task: str) -> str:
        """The name of the model a plugin declares as the default for `task`; UnknownModelError when none does."""
        check_task(task)
        found = [s.name for s in self.specs() if task in s.default_for]
        if not found:
            raise UnknownModelError(f'no installed plugin names a default model for {task!r}; pass a model name '
                                    f'(see finetune.list_models(task={task!r})).')
        return found[0]

    def specs(self, task: str | None = None) -> list[BackboneSpec]:
        """Named specs (prefix-resolved ones excluded), optionally of one task, sorted by name."""
        self._ensure_loaded()
        if task is not None:
            check_task(task)
        return sorted((s for s in self._specs.values() if task is None or task in s.tasks),
                      key=lambda s: s.name)

    def get(self, name: str) -> BackboneSpec:
        """The spec called `name`; raises UnknownModelError with the closest names."""
        self._ensure_loaded()
        if not isinstance(name, str) or not name:
            raise UnknownModelError(f'model: expected a model name such as \'resnet50\', got {name!r}.')
        if name in self._specs:
            return self._specs[name]
        prefix, sep, rest = name.partition(':')
        if sep and prefix in self._prefixes:
            plugin = self._prefixes[prefix]
            if plugin.resolve is None:
                raise UnknownModelError(f'plugin {plugin.name!r} claims {prefix}: but cannot resolve names')
            return _with_plugin(plugin.resolve(prefix, rest), plugin.name)
        lowered = {n.lower(): n for n in self._specs}
        if name.lower() in lowered:
            return self._specs[lowered[name.lower()]]
        hint = _other_type(self, name) or did_you_mean(name, self._specs)
        prefixes = ', '.join(f'{p}:<name>' for p in sorted(self._prefixes))
        more = f' Other families are reached by prefix: {prefixes}.' if prefixes else ''
        failed = ''
        if self._failures:
            failed = ' Plugins that failed to load: ' + ', '.join(f.name for f in self._failures) + '.'
        raise UnknownModelError(f'unknown model {name!r}.{hint} See finetune.list_models() or '
                                f'`finetune models` for every name.{more}{failed}')

    def names(self, pattern: str | None = None, task: str | None = None) -> list[str]:
        """Registered names matching the wildcard `pattern` (fnmatch), optionally of one task.

        ``'timm:*'`` style patterns are answered by the plugin that owns the prefix.
        """
        self._ensure_loaded()
        if pattern:
            prefix, sep, rest = pattern.partition(':')
            if sep and prefix in self._prefixes:
                plugin = self._prefixes[prefix]
                names = plugin.list_prefixed(prefix, rest or '*') if plugin.list_prefixed else []
                if task is not None:
                    check_task(task)
                    known = plugin.prefix_tasks.get(prefix)
                    if known is not None:
                        return names if task in known else []
                    names = [n for n in names if task in self.get(n).tasks]
                return names
        names = [s.name for s in self.specs(task)]
        if pattern:
            names = [n for n in names if fnmatch.fnmatchcase(n.lower(), pattern.lower())]
        return names


@contextlib.contextmanager
def _watch_ctrl_c() -> Iterator[list[bool]]:
    """Yield ``[False]``, set to True when a real SIGINT arrives inside the block (on the main thread; other
    threads never receive one), so a KeyboardInterrupt raised by a plugin can be told from the user's."""
    seen = [False]
    if threading.current_thread() is not threading.main_thread():
        yield seen
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        seen[0] = True
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGINT, handler)
    except (ValueError, OSError):  # no signals here (an embedded interpreter): nothing to tell apart
        seen[0] = True
        yield seen
        return
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, previous)


def _with_plugin(spec: BackboneSpec, plugin: str) -> BackboneSpec:
    return spec if spec.plugin == plugin else replace(spec, plugin=plugin)


def _other_type(registry: Registry, name: str) -> str:
    """' It is a cross-encoder, not a backbone.' when another registry lists `name`, else ''."""
    for other in REGISTRIES:
        if other is not registry and other.is_named(name):
            return f' {name!r} is a {other.kind}, not a {registry.kind}.'
    return ''


def all_tasks() -> tuple[str, ...]:
    """The tasks of every model registry: the backbones', then the cross-encoders'."""
    return tuple(dict.fromkeys(t for registry in REGISTRIES for t in registry.tasks()))


def registry_for_task(task: str) -> Registry:
    """The registry whose models serve `task` (checked: UnknownModelError naming the valid tasks)."""
    check_task(task)
    return next(r for r in REGISTRIES if task in r.tasks())


def check_task(task: str) -> str:
    """Return `task` if it is a task of a registry; raise UnknownModelError naming the valid tasks."""
    tasks = all_tasks()
    if task not in tasks:
        raise UnknownModelError(f'unknown task {task!r}.{did_you_mean(str(task), tasks)} '
                                f'Tasks: {", ".join(tasks)}.')
    return task


#: the process-wide registry behind :func:`finetune.list_models` and friends
REGISTRY = Registry()
#: the cross-encoders (:mod:`finetune.cross_encoders`), filled by plugins exactly as the backbones are
CROSS_ENCODERS = Registry(CROSS_ENCODER_GROUP, kind='cross-encoder', core_tasks=(CROSS_ENCODER_TASK,))
#: every registry of models, in the order tables list them
REGISTRIES = (REGISTRY, CROSS_ENCODERS)


def get_spec(name: str) -> BackboneSpec:
    return REGISTRY.get(name)


def __getattr__(name: str):
    if name == 'TASKS':  # every task, plugins' included: read when asked, so importing loads no plugin
        return REGISTRY.tasks()
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
