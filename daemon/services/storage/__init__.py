"""Storage: versioned per-agent files (heads, versions, blobs in GridFS), shares, the
policy guard that decides grants and quotas, and the read-only seam tool runners use.
"""
