"""An environment that costs a fixed wall time per step (a stand-in for a simulator)."""

from __future__ import annotations

import time
from typing import Any

__all__ = ["Delayed"]


class Delayed:
    """A picklable factory: ``Delayed("CartPole-v1", 0.002)()`` makes a gymnasium env
    whose every step first sleeps 2 ms (waiting, not computing, as a simulator or a
    robot would make a policy wait)."""

    def __init__(self, env_id: str, seconds: float):
        self.env_id = env_id
        self.seconds = float(seconds)

    def __call__(self) -> Any:
        import gymnasium

        seconds = self.seconds

        class _Sleepy(gymnasium.Wrapper):
            def step(self, action: Any) -> Any:
                time.sleep(seconds)
                return self.env.step(action)

        return _Sleepy(gymnasium.make(self.env_id))
