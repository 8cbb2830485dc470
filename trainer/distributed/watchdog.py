"""The cut-off side of a lost link must end, not hang.

When a node loses its link to the others for good, torchrun's agent there gets stuck on the
rendezvous store connection for minutes, and its workers die of the collective timeout with no one
to restart them. This watchdog runs in every worker of a node that does not host rank 0: it probes
rank 0's store (MASTER_ADDR:MASTER_PORT) over TCP, and once it has been unreachable for the process
group timeout, this node is the one cut off (the side that still reaches rank 0 restarts and
carries on with fewer nodes). It then says so, naming the lost peer, ends its torchrun agent and
exits with CUT_OFF_EXIT. A shorter outage only stalls the collectives, which then continue.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time

log = logging.getLogger("trainer")
CUT_OFF_EXIT = 75  # EX_TEMPFAIL: this node lost its peers; it did not fail on its own


class PeerWatchdog:
    def __init__(self, host: str, port: int, *, cut_off_after_s: float, probe_every_s: float = 2.0,
                 probe_timeout_s: float = 2.0):
        self.host, self.port = host, port
        self.cut_off_after_s, self.probe_every_s, self.probe_timeout_s = cut_off_after_s, probe_every_s, probe_timeout_s
        self._last_ok = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peer-watchdog", daemon=True)

    @property
    def peer(self) -> str:
        return f"rank 0's host {self.host} (store port {self.port})"

    def reachable(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=self.probe_timeout_s):
                return True
        except OSError:
            return False

    def start(self) -> "PeerWatchdog":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.probe_every_s):
            now = time.monotonic()
            if self.reachable():
                self._last_ok = now
            elif now - self._last_ok >= self.cut_off_after_s:
                self.end_node(f"unreachable for {now - self._last_ok:.0f} s")

    def check_after_failure(self) -> None:
        """Called when training raised (e.g. a collective timed out): end the node now if it is the one cut off."""
        if not self.reachable():
            self.end_node("unreachable when a collective failed")

    def end_node(self, why: str) -> None:
        msg = (f"error: lost peer {self.peer}: {why}. This node is cut off from the job; ending it (exit {CUT_OFF_EXIT})"
               " so it does not hang. The nodes that still reach rank 0 re-form without it and resume.")
        log.error(msg)  # every rank's console handler shows errors (trainer/tracking/console.py)
        for handler in logging.getLogger().handlers:
            handler.flush()
        _end_torchrun_agent()
        os._exit(CUT_OFF_EXIT)


def _end_torchrun_agent() -> None:
    """SIGKILL the torchrun agent that started this worker: it would sit on the dead store connection."""
    parent = os.getppid()
    try:
        with open(f"/proc/{parent}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return
    if "torch.distributed.run" in cmdline or "torchrun" in cmdline:
        os.kill(parent, signal.SIGKILL)


def watchdog_for_this_node(env, timeout_s: float) -> PeerWatchdog | None:
    """A watchdog for a multi-node torchrun worker on a node without rank 0; None elsewhere."""
    if env.get("TORCHELASTIC_RUN_ID") is None or int(env.get("GROUP_RANK", "0")) == 0:
        return None
    if int(env.get("WORLD_SIZE", "1")) <= int(env.get("LOCAL_WORLD_SIZE", "1")):
        return None  # a single node: nothing to be cut off from
    host, port = env.get("MASTER_ADDR"), env.get("MASTER_PORT")
    if not host or not port:
        return None
    return PeerWatchdog(host, int(port), cut_off_after_s=timeout_s)
