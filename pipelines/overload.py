"""Graceful degradation under overload, per ingress replica.

Two signals say how busy the session pipeline is: customer turns being analysed right now (``in_flight``) and the
tail of the critical path (the 90th percentile of message → first ``assist.suggestion`` over the last ``window``
turns, once there are ``min_samples`` of them: the SLO is a p95 and a mean hides the slow turns that break it;
a replica's first ``warmup`` turns, on cold models and caches, are not counted). From them:

- **Shedding**: above ``shed_inflight_turns`` or ``shed_latency_ms`` the non-critical work is skipped for new
  turns. Generated replies are the one such stage on this pipeline: the grounded articles-only suggestion is sent
  as final, marked ``fallback: "shed"``. A generator already writing ``max_generations`` replies for this replica
  sheds new ones too: a reply that would queue behind them would miss its budget anyway, and on a CPU the
  engine's work slows the critical path of every session. (Sentiment models here give a label and a score, no separate emotion
  model runs, so there is no emotion stage to shed.) Shedding stops when both signals fall below
  ``release`` (70 %) of their thresholds and ``cooldown_s`` has passed since the last turn over them, so it does
  not flap.
- **Admission**: above ``max_sessions`` open sessions, or ``admit_inflight_turns`` turns in flight, a new session
  is not refused: it waits in a FIFO queue and its client gets a ``session.queued`` notice (position, reason,
  the longest wait). It starts as soon as a session ends or the load falls; only a queue that is full, or a wait
  past ``queue_timeout_s``, ends in ``server_busy`` (retryable, nothing was accepted yet).

Every decision is counted in metrics (``switchboard_shed``, ``switchboard_sessions_queued``,
``switchboard_session_queue_wait_seconds``, ``switchboard_session_queue_depth``, ``switchboard_overload``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator

from . import metrics
from .errors import ProtocolError
from .events import SessionQueued

__all__ = ["LoadGovernor", "NON_CRITICAL"]

NON_CRITICAL = ("generation",)  # in the order they are shed


class LoadGovernor:
    def __init__(
        self,
        *,
        shed_inflight_turns: int = 8,
        shed_latency_ms: float = 400.0,
        admit_inflight_turns: int = 32,
        max_sessions: int = 11_000,
        queue_max: int = 2_000,
        queue_timeout_s: float = 60.0,
        max_generations: int = 16,
        release: float = 0.7,
        window: int = 32,
        min_samples: int = 10,
        warmup: int = 3,
        cooldown_s: float = 20.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.shed_inflight_turns = shed_inflight_turns
        self.shed_latency_ms = shed_latency_ms
        self.admit_inflight_turns = admit_inflight_turns
        self.max_sessions = max_sessions
        self.queue_max = queue_max
        self.queue_timeout_s = queue_timeout_s
        self.max_generations = max_generations
        self.generating = 0  # replies being written for this replica's sessions
        self.release = release
        self.cooldown_s = cooldown_s
        self.min_samples = min_samples
        self._warmup = warmup
        self.clock = clock
        self.in_flight = 0
        self.sessions = 0
        self.recent: deque[float] = deque(maxlen=window)  # the last turns' critical path, ms
        self.latency_ms = 0.0  # its 90th percentile
        self.shedding = False
        self._over_at = float("-inf")  # when a signal was last over its threshold
        self._waiters: deque[asyncio.Future[None]] = deque()

    @classmethod
    def from_settings(cls, settings) -> LoadGovernor:
        return cls(
            shed_inflight_turns=settings.shed_inflight_turns,
            shed_latency_ms=settings.shed_latency_ms,
            admit_inflight_turns=settings.admit_inflight_turns,
            max_sessions=settings.max_sessions_per_replica,
            queue_max=settings.session_queue_max,
            queue_timeout_s=settings.session_queue_timeout_s,
            max_generations=settings.max_concurrent_generations,
        )

    # ------------------------------------------------------------ load signals and shedding

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        """A customer turn being analysed (its critical path)."""
        self.in_flight += 1
        self._update()
        try:
            yield
        finally:
            self.in_flight -= 1
            self._update()
            self._wake()

    @contextlib.contextmanager
    def generation(self) -> Iterator[None]:
        """A reply being generated (background work after the turn's first suggestion)."""
        self.generating += 1
        try:
            yield
        finally:
            self.generating -= 1

    def observe(self, critical_ms: float) -> None:
        """One turn's message → first suggestion time."""
        if self._warmup > 0:
            self._warmup -= 1
            return
        self.recent.append(critical_ms)
        if len(self.recent) >= self.min_samples:
            ordered = sorted(self.recent)
            self.latency_ms = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
        self._update()

    def _update(self) -> None:
        now = self.clock()
        over = self.in_flight >= self.shed_inflight_turns or self.latency_ms >= self.shed_latency_ms
        if over:
            self._over_at = now
        under = (
            self.in_flight < self.shed_inflight_turns * self.release
            and self.latency_ms < self.shed_latency_ms * self.release
            and now - self._over_at >= self.cooldown_s
        )
        if over and not self.shedding:
            self.shedding = True
            metrics.set_overload(True)
        elif under and self.shedding:
            self.shedding = False
            metrics.set_overload(False)

    def shed(self, stage: str, tenant: str, channel: str) -> bool:
        """Whether ``stage`` is skipped for this turn (counted when it is)."""
        if stage not in NON_CRITICAL:
            return False
        busy = stage == "generation" and self.generating >= self.max_generations
        if not (self.shedding or busy):
            return False
        metrics.count_shed(stage, tenant, channel)
        return True

    # ------------------------------------------------------------ admission

    def _admissible(self) -> str | None:
        """Why a new session must wait now (None: it may start)."""
        if self.sessions >= self.max_sessions:
            return "sessions"
        if self.in_flight >= self.admit_inflight_turns:
            return "load"
        return None

    async def admit(self, notify: Callable[[SessionQueued], Awaitable[None]]) -> None:
        """Start a session now, or queue it (``notify`` tells its client) until it may start. Raises
        ``server_busy`` when the queue is full or the wait runs out. Pair with :meth:`leave`."""
        reason = self._admissible()
        if reason is None and not self._waiters:
            self.sessions += 1
            return
        if len(self._waiters) >= self.queue_max:
            metrics.count_queued("refused")
            raise ProtocolError(
                f"the server is at capacity and {len(self._waiters)} sessions are already waiting; "
                "try again in a minute",
                code="server_busy",
            )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        metrics.count_queued("queued")
        metrics.set_session_queue(len(self._waiters))
        t0 = self.clock()
        try:
            position = len(self._waiters)
            await notify(
                SessionQueued(
                    position=position,
                    reason=reason or "load",  # type: ignore[arg-type]
                    notice=f"We are busier than usual: your conversation starts in a moment (number {position} "
                    "in line).",
                    timeout_s=self.queue_timeout_s,
                )
            )
            self._wake()
            await asyncio.wait_for(asyncio.shield(waiter), self.queue_timeout_s)
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():  # admitted at the last moment: give the place back
                self.leave()
            else:
                waiter.cancel()
            if isinstance(exc, TimeoutError):
                metrics.count_queued("timed_out")
                raise ProtocolError(
                    f"no capacity freed up within {self.queue_timeout_s:g} s; nothing was started, try again shortly",
                    code="server_busy",
                ) from None
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            metrics.set_session_queue(len(self._waiters))
            metrics.observe_queue_wait(self.clock() - t0)

    def leave(self) -> None:
        """A session admitted by :meth:`admit` ended."""
        self.sessions = max(0, self.sessions - 1)
        self._wake()

    def _wake(self) -> None:
        """Admit waiters, first come first served, while there is room. Runs at every turn's end: with nobody
        waiting it does nothing."""
        if not self._waiters:
            return
        while self._waiters and self._admissible() is None:
            waiter = self._waiters.popleft()
            if waiter.done():
                continue
            self.sessions += 1
            waiter.set_result(None)
        metrics.set_session_queue(len(self._waiters))

    def describe(self) -> dict[str, float | int | bool]:
        return {
            "sessions": self.sessions,
            "queued": len(self._waiters),
            "turns_in_flight": self.in_flight,
            "critical_path_ms_p90": round(self.latency_ms, 1),
            "shedding": self.shedding,
            "generating": self.generating,
        }
