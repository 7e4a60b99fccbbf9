"""One weight resolver: pretrained weights described as data, found offline first, one message when they
are not there.

A family describes where its weights may be as a list of sources: a local file (:class:`LocalFile`), a file
shipped inside an installed package (:class:`PackageFile`), a URL whose download is cached in a folder
(:class:`UrlFile`), or any object with the same small interface (a model hub's cache, say: see
:class:`WeightSource`). :func:`find_weights` returns the first local copy; only when there is none, and the
network is allowed and answers within seconds, does it try the downloads in order. When nothing works,
:func:`weights_not_found` builds the one error every family raises: what was looked for, where, why nothing
was downloaded, and the ways out.
"""
from __future__ import annotations

import os
import socket
import urllib.parse
from dataclasses import dataclass, field
from typing import Callable, Sequence

from .errors import WeightsNotFoundError

#: the library's own switch for 'no network'; plugins add their ecosystems' (BackbonePlugin.offline_envs)
OFFLINE_ENV = 'FINETUNE_OFFLINE'
CONNECT_TIMEOUT_S = 3.0


# ---------------------------------------------------------------- the network
def offline_envs() -> tuple[str, ...]:
    """The environment variables that mean 'no network': the library's and those the plugins declare."""
    from .registry import CROSS_ENCODERS, REGISTRY
    declared = [env for registry in (REGISTRY, CROSS_ENCODERS) for plugin in registry.plugins.values()
                for env in plugin.offline_envs]
    return tuple(dict.fromkeys((OFFLINE_ENV, *declared)))


def offline_requested() -> str | None:
    """Why the network must not be used ('offline mode is set (HF_HUB_OFFLINE)'), or None."""
    names = [k for k in offline_envs() if os.environ.get(k, '').strip() not in ('', '0', 'false', 'False')]
    return f'offline mode is set ({", ".join(names)})' if names else None


def host_reachable(url: str, timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """True when a TCP connection to `url`'s host opens within `timeout` seconds."""
    parts = urllib.parse.urlparse(url)
    port = parts.port or (443 if parts.scheme == 'https' else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def network_problem(url: str) -> str | None:
    """Why nothing can be downloaded from `url` now (offline mode, or its host not answering), or None."""
    reason = offline_requested()
    if reason is None and not host_reachable(url):
        reason = f'{urllib.parse.urlparse(url).hostname} could not be reached within {CONNECT_TIMEOUT_S:g}s'
    return reason


# ---------------------------------------------------------------- sources
class WeightSource:
    """Where weights may be. ``what`` and ``where`` name the file and the folder for the message, ``host`` the
    URL that must answer before :meth:`download` is tried (None: nothing to download), ``hint`` an extra way
    out specific to this source."""

    what: str = ''
    where: str = ''
    host: str | None = None
    hint: str = ''

    def local(self) -> str | None:
        """The path of a local copy, or None."""
        return None

    def download(self) -> str:
        """Fetch the file; returns its path. Raises anything on failure (the resolver reports it)."""
        raise NotImplementedError


@dataclass(frozen=True)
class LocalFile(WeightSource):
    """A file on this machine."""

    path: str

    @property
    def what(self) -> str:
        return os.path.basename(self.path)

    @property
    def where(self) -> str:
        return os.path.dirname(os.path.abspath(self.path))

    def local(self) -> str | None:
        return self.path if os.path.isfile(self.path) else None


@dataclass(frozen=True)
class PackageFile(WeightSource):
    """A file shipped inside an installed distribution (`package`, as pip names it); `locate()` returns its
    path, or None when the package is not installed."""

    package: str
    locate: Callable[[], str | None] = field(compare=False)
    filename: str = 'its weights file'

    @property
    def what(self) -> str:
        return f'{self.filename} of the package {self.package}'

    @property
    def where(self) -> str:
        return f'the installed packages (pip install {self.package})'

    def local(self) -> str | None:
        try:
            path = self.locate()
        except ImportError:
            return None
        return path if path and os.path.isfile(path) else None


@dataclass(frozen=True)
class UrlFile(WeightSource):
    """The file at `url`, cached as `filename` (default: the URL's) in `folder` (default: torch hub's
    checkpoints folder, where torchvision and timm cache theirs). `fetch` replaces the default download
    (torch hub's, into `folder`), e.g. by a library's own that checks a checksum."""

    url: str
    folder: str | None = None
    filename: str | None = None
    fetch: Callable[[], str] | None = field(default=None, compare=False)

    @property
    def file(self) -> str:
        return self.filename or os.path.basename(urllib.parse.urlparse(self.url).path)

    @property
    def what(self) -> str:
        return f'{self.file} (from {self.url})'

    @property
    def where(self) -> str:
        return self.folder or torch_hub_checkpoints()

    @property
    def host(self) -> str:
        return self.url

    def local(self) -> str | None:
        path = os.path.join(self.where, self.file)
        return path if os.path.isfile(path) else None

    def download(self) -> str:
        if self.fetch is not None:
            return self.fetch()
        import torch
        os.makedirs(self.where, exist_ok=True)
        path = os.path.join(self.where, self.file)
        torch.hub.download_url_to_file(self.url, path, progress=True)
        return path


def torch_hub_checkpoints() -> str:
    """torch hub's checkpoint folder (``$TORCH_HOME/hub/checkpoints``)."""
    import torch
    return os.path.join(torch.hub.get_dir(), 'checkpoints')


# ---------------------------------------------------------------- the resolver
def find_weights(model: str, sources: Sequence[WeightSource], example: str | None = None,
                 name_hint: str = '', detail: str = '') -> str:
    """The path of `model`'s weights: the first local copy among `sources`, else the first download that
    works (tried only where the network is allowed and the source's host answers within seconds).

    Raises the one WeightsNotFoundError (:func:`weights_not_found`) within seconds when none is found;
    `example` is the file name shown in the ways out, `name_hint` one more way out (e.g. a registry name that
    takes a weights file), `detail` what `model` is (shown after its name)."""
    for source in sources:
        path = source.local()
        if path is not None:
            return path
    reasons: list[str] = []
    for source in sources:
        if source.host is None:
            continue
        reason = network_problem(source.host)
        if reason is None:
            try:
                return source.download()
            except Exception as exc:  # noqa: BLE001 - reported with the ways out
                reason = f'the download failed ({type(exc).__name__}: {exc})'
        if reason not in reasons:
            reasons.append(reason)
    raise weights_not_found(model, sources, '; '.join(reasons) or 'no copy on this machine', example, name_hint,
                            detail=detail)


def weights_not_found(model: str, sources: Sequence[WeightSource], reason: str, example: str | None = None,
                      name_hint: str = '', what: str = 'pretrained weights', detail: str = '',
                      path_option: bool = True, random_way: str = '') -> WeightsNotFoundError:
    """The error for `what` of `model` that are not on this machine: why (`reason`), each source's file and
    folder, and the ways out: the file into one of the folders (or its path as ``pretrained``, unless
    `path_option` is False), `name_hint`, and random weights (`random_way` says what those still need)."""
    looked = '\n'.join(f'  looked for: {s.what}\n  in:         {s.where}' for s in sources)
    example = example or next((s.file for s in sources if hasattr(s, 'file')), 'weights.safetensors')
    hints = ''.join(f' ({s.hint})' for s in sources if s.hint)
    first = f'(1) put the file into one of those folders{hints}'
    if path_option:
        first += f", or pass its path as model_options={{'pretrained': '/path/to/{example}'}}"
    if name_hint:
        first += f', or {name_hint}'
    second = f"(2) use random weights with model_options={{'pretrained': False}}{random_way}"
    shown = f'{model!r}' + (f' ({detail})' if detail else '')
    return WeightsNotFoundError(f'{what} for {shown} are not available: {reason}.\n{looked}\n'
                                f'Ways out: {first}; {second}.')
