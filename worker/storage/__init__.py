"""S3 transfers: listing, streamed (parallel ranged) downloads, multipart uploads.

One concept per module; what callers use is re-exported here
(``from worker.storage import ObjectStore``):

- :mod:`~worker.storage.store`: :class:`ObjectStore`, the operations the job needs (listing,
  head, the scratch-space check, download, upload);
- :mod:`~worker.storage.downloads`: ranged, resumable downloads streamed to a file;
- :mod:`~worker.storage.uploads`: PutObject or parallel multipart uploads, with CRC32;
- :mod:`~worker.storage.parts`: part sizes, byte ranges and the parallel part workers;
- :mod:`~worker.storage.matching`: which S3 and disk errors mean "not found", "disk full".
"""

from __future__ import annotations

from worker.storage.parts import DEFAULT_PART_SIZE, MAX_PARTS, MIB, MIN_PART_SIZE, WRITE_CHUNK
from worker.storage.store import ObjectStore

__all__ = ["DEFAULT_PART_SIZE", "MAX_PARTS", "MIB", "MIN_PART_SIZE", "WRITE_CHUNK", "ObjectStore"]
