"""The audit trail on disk: the files (`files`), the writer (`writer`), reading and verifying
(`reader`).  The interface callers record through is `gateway.audit.IAuditTrail`.

Layout of ``STATE_DIR/audit/`` (folder 0700, files 0600: the trail names engineers and
addresses):

``audit.jsonl``
    The file being written.  ``tail -F`` follows it across rotations.
``audit-000000000231.jsonl``
    A rotated file, named after the ``seq`` of its first record (12 digits, so names sort in
    chain order).  A file is renamed once, when it reaches ``max_bytes``, and never again.
``audit.lock``
    Empty; ``flock`` on it serialises writers (the daemon and a CLI command recording on the same
    trail), so the chain never forks.

One record a line, compact JSON in this key order: ``time`` (ISO 8601 UTC, milliseconds, ``Z``),
``seq`` (1, 2, 3 ... across files), ``event``, ``sr`` (IEC 62443-3-3 ids), ``who``, ``result``,
the event's details, and ``prev``: the SHA-256 (hex) of the previous line's bytes without its
newline, or `GENESIS` for the first record of a new trail.  The first line of every new file is an
``audit.rotated`` record chaining to the last line of the file before it and naming the files the
rotation deleted, with ``anchor`` = the ``seq`` and ``prev`` of the oldest record kept, so that a
trail whose beginning was deleted by rotation still verifies and one cut anywhere else does not.
"""
