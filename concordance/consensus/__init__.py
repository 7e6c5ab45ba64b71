"""The consensus role: drives the Raft core against raft.db, the front and storage.

Why a package: the role is one asyncio task around a pure core
(``concordance.raft``), but it has several separate jobs, each in a module of
its own so each can be read and tested alone:

* ``driver``: the loop that owns the core -- inputs in, Ready out, in the
  order of the driver contract (persist -> send -> apply -> advance);
* ``disk``: raft.db and the snapshot files on one worker thread (fsyncs never
  block the loop), plus the core's synchronous view of the log;
* ``apply_stream``: committed entries to storage, in order, resumable from
  whatever storage reports after a restart;
* ``snapshots``: asking storage for snapshots, adopting them, compacting;
* ``status`` and ``waiters``: the ``status_ok`` view and parked requests.

``procs/consensus.py`` is the thin process entry point::

    driver = await ConsensusDriver.open(cfg)
    loop.add_signal_handler(signal.SIGTERM, driver.stop)
    await driver.run()
"""

from __future__ import annotations

from concordance.consensus.driver import ConsensusDriver, boot_membership

__all__ = ["ConsensusDriver", "boot_membership"]
