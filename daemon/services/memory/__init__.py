"""Memory: per-agent notes (add/get/update/delete/search), their ranking and the
policy guard that decides sharing and quotas.
"""
