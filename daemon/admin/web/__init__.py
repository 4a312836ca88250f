"""``aiosd web``: the operator's console in a browser (read-only, plus approvals).

Kept free of imports: the command line imports :mod:`.cli` at every start,
and the web stack is loaded only when the console runs.
"""
