"""In-graph training: DQN and DDPG agents whose train steps are ``tf.function``s.

Import the submodules (``toolkit.agents.dqn``, ``toolkit.agents.ddpg``,
``toolkit.agents.checkpoints``); this package imports nothing itself, so that importing
it does not load TensorFlow.
"""
