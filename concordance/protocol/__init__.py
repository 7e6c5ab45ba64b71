"""The byte formats a node speaks and the values they carry, without I/O.

IPC envelopes (``wire``), peer frames (``wire_raft``, ``peerwire``), log commands
(``commands``) on one codec engine (``codec``); typed payloads and KV key rules.
"""
