"""The audio headers a dataset's prescan needs, read once for all ranks and cached.

Every rank used to open every audio header at start, one file after another and silently: on a
shared filesystem, thousands of ranks times a million files is a metadata storm. Now, under
``torch.distributed``, the ranks split the files between them and exchange what they read, and the
headers read fine are cached next to each manifest, in ``.<manifest name>.audio-headers.json``,
keyed by the manifest's content (SHA-1): the next start with the same manifest opens no audio
file. Files that could not be read are never cached: they are tried (and reported) again at the
next start. A folder that cannot be written just gets no cache. Rank 0 logs progress.

A file changed after it was cached is still caught when it is decoded (the dataset then
substitutes the sample, as for any file that breaks after the prescan).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile

import torch

from .audio import AudioError, AudioInfo, audio_info
from .manifest import Example
from .progress import Progress

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
PROGRESS_SECONDS = 10.0


def cache_path(manifest: str) -> str:
    folder, name = os.path.split(os.path.abspath(manifest))
    return os.path.join(folder, f'.{name}.audio-headers.json')


def _digest(manifest: str) -> str:
    sha = hashlib.sha1()
    with open(manifest, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            sha.update(block)
    return sha.hexdigest()


def _read_cache(manifest: str, digest: str) -> dict[str, AudioInfo]:
    """The cached headers of ``manifest`` if the cache was made from this content, else {}."""
    try:
        with open(cache_path(manifest)) as f:
            cached = json.load(f)
        if cached['version'] != CACHE_VERSION or cached['manifest_sha1'] != digest:
            return {}
        return {path: AudioInfo(*fields) for path, fields in cached['headers'].items()}
    except (OSError, ValueError, KeyError, TypeError):  # none yet, or unreadable: read the headers
        return {}


def _write_cache(manifest: str, digest: str, headers: dict[str, AudioInfo]) -> None:
    """Atomic (a temporary file renamed), and best effort: a read-only folder just means no cache."""
    path = cache_path(manifest)
    body = {'version': CACHE_VERSION, 'manifest_sha1': digest,
            'headers': {p: [i.sample_rate, i.channels, i.num_frames] for p, i in headers.items()}}
    tmp = None
    try:  # a name of its own: two jobs may start on one manifest at once
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path), dir=os.path.dirname(path))
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide the cache from the corpus's other users
        with os.fdopen(fd, 'w') as f:
            json.dump(body, f)
        os.replace(tmp, path)
    except OSError as e:
        logger.info('audio headers of %s not cached: %s', manifest, e)
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def _world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _from_rank0(value, world: int):
    if world > 1:
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        value = box[0]
    return value


def _read_share(paths: list[str], progress: Progress | None) -> dict[str, AudioInfo | AudioError] | Exception:
    """path -> header, or the AudioError reading it; any other error is returned, for every rank
    to raise it (raised here, it would leave the other ranks waiting for this one)."""
    out = {}
    try:
        for path in paths:
            try:
                out[path] = audio_info(path)
            except AudioError as e:
                out[path] = e
            if progress is not None:
                progress.advance()
    except Exception as e:  # re-raised on every rank by _gather
        return e
    return out


def _gather(share, world: int) -> dict[str, AudioInfo | AudioError]:
    shares = [share]
    if world > 1:
        shares = [None] * world
        torch.distributed.all_gather_object(shares, share)
    for part in shares:
        if isinstance(part, Exception):
            raise part
    return {path: result for part in shares for path, result in part.items()}


def scan_headers(examples: list[Example]) -> dict[str, AudioInfo | AudioError]:
    """The header, or the error reading it, of every audio the examples name. Collective under
    ``torch.distributed``: every rank calls it with the same examples and gets the same answer."""
    rank, world = _world()
    manifests = [m for m in dict.fromkeys(ex.source for ex in examples) if os.path.isfile(m)]
    paths = list(dict.fromkeys(seg.value for ex in examples for seg in ex.audios))
    digests, cached = {}, {}
    if rank == 0:  # one rank reads the caches; every rank then agrees on what is left to read
        digests = {m: _digest(m) for m in manifests}
        for m in manifests:
            cached.update(_read_cache(m, digests[m]))
    cached = _from_rank0(cached, world)
    todo = [p for p in paths if p not in cached]
    if rank == 0:
        logger.info('audio headers: %d cached beside the manifest, %d to read over %d rank(s)',
                    len(paths) - len(todo), len(todo), world)
    if not todo:
        return {p: cached[p] for p in paths}
    share = todo[rank::world]
    progress = Progress("audio headers (rank 0's share)", len(share), 'files', PROGRESS_SECONDS,
                        logger=logger) if rank == 0 else None
    found = _gather(_read_share(share, progress), world)
    headers = {**cached, **found}
    if rank == 0:
        _report_and_cache(examples, manifests, digests, headers, found)
    return {p: headers[p] for p in paths}


def _report_and_cache(examples, manifests, digests, headers, found) -> None:
    unreadable = sum(isinstance(r, AudioError) for r in found.values())
    if unreadable:
        logger.info('audio headers: %d of %d could not be read (not cached; the prescan reports each)',
                    unreadable, len(found))
    for manifest in manifests:
        mine = [seg.value for ex in examples if ex.source == manifest for seg in ex.audios]
        if any(isinstance(found.get(p), AudioInfo) for p in mine):  # else the cache has them all
            _write_cache(manifest, digests[manifest], {p: headers[p] for p in mine
                                                       if isinstance(headers[p], AudioInfo)})
