"""Where file content lives: inline in its version document, or in GridFS when large.

Small content (up to :data:`INLINE_MAX` bytes) is stored in the version
document itself, so a read is one ``_id`` find. Larger content goes to a
GridFS bucket (pymongo's :mod:`gridfs`: a ``files`` and a ``chunks``
collection written with inserts only), which keeps every document far below
MongoDB's 16 MiB limit.

Measured on the development server (FerretDB 1.24, SQLite): GridFS works, but
FerretDB pushes only ``_id`` filters down, so reading or deleting a blob scans
the whole ``chunks`` collection (about 1.3 s per read with 60 MB of other
blobs stored). MongoDB uses GridFS's ``files_id`` index. Keeping small files
inline keeps the common case off that path on every server.

A blob is uploaded before the version that points to it is committed, so a
crash in between (or during the upload) would leave it behind. Each upload
therefore first records an intent (``storage_uploads``, by the blob's id),
removed once its version is committed or the blob dropped; the housekeeping
job :meth:`Blobs.sweep_orphans` drops the blobs of intents left older than a
grace period that no version points to.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta

from bson import Binary
from gridfs import GridFSBucket, NoFile
from pymongo.collection import Collection
from pymongo.database import Database

from aiosd.daemon.store import Doc
from aiosd.sdk.protocol import utcnow

#: Content above this many bytes goes to GridFS.
INLINE_MAX = 256 * 1024
BUCKET = "storage_blobs"
#: Uploads in progress: one intent per blob until its version is committed.
UPLOADS = "storage_uploads"
#: An upload intent older than this, with no version pointing to its blob, is an orphan.
ORPHAN_GRACE = timedelta(minutes=15)


class Blobs:
    """Places, loads and drops the content of file versions."""

    def __init__(self, db: Database[Doc], inline_max: int = INLINE_MAX) -> None:
        self._fs = GridFSBucket(db, bucket_name=BUCKET)
        self._files = db[f"{BUCKET}.files"]
        self._chunks = db[f"{BUCKET}.chunks"]
        self._uploads = db[UPLOADS]
        self._inline_max = inline_max

    def place(self, data: bytes, name: str) -> Doc:
        """Store ``data``; return the fields that locate it in a version document."""
        if len(data) <= self._inline_max:
            return {"data": Binary(data)}
        # A fresh id per attempt: a retried write never collides with the blob of a crashed one.
        blob_id = uuid.uuid4().hex
        self._uploads.insert_one({"_id": blob_id, "started_at": utcnow()})
        self._fs.upload_from_stream_with_id(blob_id, name, data, metadata={"sha256": _sha256(data)})
        return {"blob": blob_id}

    def committed(self, doc: Doc) -> None:
        """The version locating this blob is committed: its upload is no longer in doubt."""
        if "blob" in doc:
            self._uploads.delete_one({"_id": doc["blob"]})

    def sweep_orphans(self, versions: Collection[Doc], grace: timedelta = ORPHAN_GRACE) -> int:
        """Drop blobs whose upload never got a version (a crash mid-write); return how many."""
        stale = [d["_id"] for d in self._uploads.find({"started_at": {"$lt": utcnow() - grace}}, {"_id": 1})]
        if not stale:
            return 0
        # Rare (crashes only), so this read by a non-_id field may scan: it is not on the hot path.
        kept = {d["blob"] for d in versions.find({"blob": {"$in": stale}}, {"blob": 1})}
        orphans = [blob for blob in stale if blob not in kept]
        self.drop_many(orphans)
        self._uploads.delete_many({"_id": {"$in": stale}})
        return len(orphans)

    def load(self, doc: Doc) -> bytes:
        """The content a version document locates."""
        if "data" in doc:
            return bytes(doc["data"])
        with self._fs.open_download_stream(doc["blob"]) as stream:
            return stream.read()

    def drop(self, doc: Doc) -> None:
        """Delete a version's GridFS blob, if it has one (inline content goes with its document)."""
        blob_id = doc.get("blob")
        if blob_id is None:
            return
        try:
            self._fs.delete(blob_id)
        except NoFile:
            pass  # already gone: a prune or purge repeated after a crash
        self._uploads.delete_one({"_id": blob_id})

    def drop_many(self, blob_ids: list[str]) -> None:
        """Delete many blobs at once.

        GridFS's own ``delete`` removes one blob with two deletes; doing a batch
        with two ``$in`` deletes (the GridFS layout is a published spec) means one
        pass over ``chunks`` on servers that scan for every delete.
        """
        if blob_ids:
            self._files.delete_many({"_id": {"$in": blob_ids}})
            self._chunks.delete_many({"files_id": {"$in": blob_ids}})


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
