"""In-graph training: DQN, DDPG, SAC and PPO agents whose train steps are ``tf.function``s.

Import the submodules (``toolkit.agents.dqn``, ``ddpg``, ``sac``, ``ppo``, ``training``,
``toolkit.agents.checkpoints``); this package imports nothing itself, so that importing
it does not load TensorFlow.
"""
