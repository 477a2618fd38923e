"""An environment that costs a fixed wall time per step (a stand-in for a simulator)."""

from __future__ import annotations

import time
from typing import Any

__all__ = ["Delayed"]


class Delayed:
    """A picklable factory: ``Delayed("CartPole-v1", 0.002)()`` makes a gymnasium env
    whose every step first sleeps 2 ms (waiting, not computing, as a simulator or a
    robot would make a policy wait); ``reset_seconds`` makes each reset wait too, so an
    episode lasts at least that long whatever the policy does."""

    def __init__(self, env_id: str, seconds: float, reset_seconds: float = 0.0):
        self.env_id = env_id
        self.seconds = float(seconds)
        self.reset_seconds = float(reset_seconds)

    def __call__(self) -> Any:
        import gymnasium

        seconds, reset_seconds = self.seconds, self.reset_seconds

        class _Sleepy(gymnasium.Wrapper):
            def step(self, action: Any) -> Any:
                time.sleep(seconds)
                return self.env.step(action)

            def reset(self, **kwargs: Any) -> Any:
                if reset_seconds:
                    time.sleep(reset_seconds)
                return self.env.reset(**kwargs)

        return _Sleepy(gymnasium.make(self.env_id))
